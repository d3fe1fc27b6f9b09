# Relay latency against concurrent streams (scenario 2, 5 tokens/s each).
#
#   gnuplot -e "dir='build/bench'; out='bench/results/DAY.png'" bench/plot.gp
#
# Reads DIR/s2-{floor,module,baseline}.dat (bench/report.py writes them):
# streams p50_ms p99_ms max_ms ok.

if (!exists("dir")) dir = 'build/bench'
if (!exists("out")) out = 'latency.png'

set terminal pngcairo size 1000,620 font 'DejaVu Sans,11'
set output out

set title 'Relay latency per token against concurrent streams (5 tokens/s each)'
set xlabel 'concurrent streams'
set ylabel 'latency (ms), log scale'
set logscale y
set logscale x 2
set format y '%g'
set grid xtics ytics mytics lc rgb '#dddddd'
set key top left box opaque
set xrange [*:*]

f = dir.'/s2-floor.dat'
m = dir.'/s2-module.dat'
b = dir.'/s2-baseline.dat'

# the 100 ms rule on the added p99
set arrow from graph 0, first 100 to graph 1, first 100 nohead \
    lc rgb '#cc0000' dt 3
set label 'capacity rule: p99 added > 100 ms' at graph 0.62, first 125 \
    tc rgb '#cc0000'

plot m u 1:3 w lp lw 2 pt 7 lc rgb '#1f77b4' t 'module p99', \
     m u 1:2 w lp lw 1 pt 6 dt 2 lc rgb '#1f77b4' t 'module p50', \
     b u 1:3 w lp lw 2 pt 5 lc rgb '#ff7f0e' t 'baseline (FastAPI) p99', \
     b u 1:2 w lp lw 1 pt 4 dt 2 lc rgb '#ff7f0e' t 'baseline (FastAPI) p50', \
     f u 1:3 w lp lw 2 pt 9 lc rgb '#2ca02c' t 'floor (mock direct) p99', \
     f u 1:2 w lp lw 1 pt 8 dt 2 lc rgb '#2ca02c' t 'floor (mock direct) p50'
