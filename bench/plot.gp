# Relay latency against concurrent streams (scenario 2, 5 tokens/s each).
#
#   gnuplot -e "dir='build/bench'; out='bench/results/DAY.png'" bench/plot.gp
#
# Reads DIR/s2-{floor,module,baseline}.dat, which bench/report.py writes:
# streams p50_ms p99_ms max_ms ok (0: the level that failed the rule).

if (!exists("dir")) dir = 'build/bench'
if (!exists("out")) out = 'latency.png'

set terminal pngcairo size 1000,620 font 'DejaVu Sans,11'
set output out

set title 'Relay latency per token against concurrent streams (5 tokens/s each)'
set xlabel 'concurrent streams'
set ylabel 'latency (ms)'
set logscale xy
set xtics ('100' 100, '200' 200, '500' 500, '1k' 1000, '2k' 2000, \
           '5k' 5000, '10k' 10000, '20k' 20000)
set format y '%g'
set grid xtics ytics lc rgb '#d8d8d8' lw 1
set key top left box opaque spacing 1.1
set xrange [70:14000]
set yrange [0.01:5000]

f = dir.'/s2-floor.dat'
m = dir.'/s2-module.dat'
b = dir.'/s2-baseline.dat'

# the capacity rule: a relay's p99 more than 100 ms over the floor's
set arrow from graph 0, first 100 to graph 1, first 100 nohead \
    lc rgb '#cc0000' dt 3
set label 'capacity rule: p99 - floor p99 > 100 ms' at graph 0.33, \
    first 130 left tc rgb '#cc0000'

failed(ok, y) = (ok == 0 ? y : NaN)

plot m u 1:3 w lp lw 2 pt 7 lc rgb '#1f77b4' t 'module p99', \
     m u 1:2 w lp lw 1 pt 6 dt 2 lc rgb '#1f77b4' t 'module p50', \
     b u 1:3 w lp lw 2 pt 5 lc rgb '#ff7f0e' t 'baseline (FastAPI) p99', \
     b u 1:2 w lp lw 1 pt 4 dt 2 lc rgb '#ff7f0e' t 'baseline (FastAPI) p50', \
     f u 1:3 w lp lw 2 pt 9 lc rgb '#2ca02c' t 'floor (mock direct) p99', \
     f u 1:2 w lp lw 1 pt 8 dt 2 lc rgb '#2ca02c' t 'floor (mock direct) p50', \
     m u 1:(failed($5, $3)) w p pt 2 ps 3 lw 2 lc rgb '#cc0000' \
         t 'level that failed', \
     b u 1:(failed($5, $3)) w p pt 2 ps 3 lw 2 lc rgb '#cc0000' notitle
