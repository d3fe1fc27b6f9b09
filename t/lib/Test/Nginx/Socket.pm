package Test::Nginx::Socket;

# A small stand-in for OpenResty's Test::Nginx::Socket (CPAN only, not in
# Debian), written from its documented behaviour.  It implements the subset
# of the block format this project's t/*.t files use, so that the same files
# pass under both.  The real module is preferred whenever it is installed:
# util/test.sh adds -I t/lib only when `perl -MTest::Nginx::Socket -e1`
# fails.  t/README lists the supported sections, functions and environment
# variables; a block using a section listed in @Unsupported stops the run.

use strict;
use warnings;

use Test::Base -base;    # lower case: no Spiffy source filter

use File::Path qw(remove_tree make_path);
use File::Spec ();
use HTTP::Response ();
use IO::Select ();
use IO::Socket::INET ();
use List::Util qw(shuffle min max);
use POSIX qw(EAGAIN EWOULDBLOCK WNOHANG SIGQUIT SIGKILL);
use Test::LongString ();
use Time::HiRes qw(sleep time);

our $VERSION = '0.30-llm';

our @EXPORT = qw(
    run_tests repeat_each no_shuffle log_level master_on master_off
    master_process_enabled workers worker_connections env_to_nginx
    no_long_string no_root_location server_port server_port_for_client
    server_addr server_name server_root html_dir timeout config_preamble
    check_accum_error_log add_block_preprocessor add_cleanup_handler
    bail_out is_str
);

# ---------------------------------------------------------------- settings

our $RepeatEach        = 1;
our $NoShuffle         = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $LogLevel          = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcess     = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $Workers           = 1;
our $WorkerConnections = 64;
our $NoRootLocation    = 0;
our $NoLongString      = 0;
our $ConfigPreamble    = '';
our $CheckAccumErrLog  = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $ServerAddr        = '127.0.0.1';
our $ServerName        = 'localhost';
our $ServerPort        = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ENV{TEST_NGINX_PORT}
                           || $ServerPort;
our $Timeout           = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $TestNginxSleep    = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $UseValgrind       = $ENV{TEST_NGINX_USE_VALGRIND};
our $ForceRestart      = $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} // 1;
# Local extension that only affects timing: multiplies client timeouts and
# start/stop waits (util/test.sh sets it under valgrind).
our $TimeoutScale      = $ENV{TEST_NGINX_TIMEOUT_SCALE} || 1;
our $NginxBinary       = $ENV{TEST_NGINX_BINARY} || find_in_path('nginx')
                         || '/usr/sbin/nginx';

our $ServRoot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;
our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";
our $StderrFile = "$LogDir/nginx.stderr";

our (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers);
our ($PrevConfig, $PrevBlock, $ChildPid, $NginxVersion, $ErrLogFilePos, $Started);
my $MainPid = $$;

# Sections of the real module that are not implemented here.
my @Unsupported = qw(tcp_listen udp_listen stap stap_out stap_out_like
    stap_out_unlike http2 http3 curl todo todo_nginx skip_nginx skip_nginx2
    skip_openssl skip_slave reload_fails server_addr_for_client http09
    response_body_filters request_eval response_body_eval);

# ------------------------------------------------------ exported functions

sub repeat_each    { $RepeatEach = shift if @_; $RepeatEach }
sub no_shuffle     { $NoShuffle = 1 }
sub log_level      { $LogLevel = shift if @_; $LogLevel }
sub master_on      { $MasterProcess = 'on' }
sub master_off     { $MasterProcess = 'off' }
sub master_process_enabled { $MasterProcess = $_[0] ? 'on' : 'off' if @_; $MasterProcess }
sub workers            { $Workers = shift if @_; $Workers }
sub worker_connections { $WorkerConnections = shift if @_; $WorkerConnections }
sub no_long_string     { $NoLongString = 1 }
sub no_root_location   { $NoRootLocation = 1 }
sub server_port        { $ServerPort = shift if @_; $ServerPort }
sub server_port_for_client { $ServerPortForClient = shift if @_; $ServerPortForClient }
sub server_addr        { $ServerAddr = shift if @_; $ServerAddr }
sub server_name        { $ServerName = shift if @_; $ServerName }
sub server_root        { $ServRoot }
sub html_dir           { $HtmlDir }
sub timeout            { $Timeout = shift if @_; $Timeout }
sub config_preamble    { $ConfigPreamble = shift }
sub check_accum_error_log  { $CheckAccumErrLog = 1 }
sub add_block_preprocessor { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler    { unshift @CleanupHandlers, shift }

sub env_to_nginx {
    Carp::croak("env_to_nginx: no arguments specified") unless @_;
    for my $v (@_) {
        Carp::croak("env_to_nginx: bad argument value: $v")
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

sub bail_out {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}

# String comparison honouring no_long_string() and qr// expectations.
sub is_str {
    my ($got, $expected, $desc) = @_;
    return Test::More::like($got, $expected, $desc) if ref $expected eq 'Regexp';
    return Test::Base::is($got, $expected, $desc) if $NoLongString;
    return Test::LongString::is_string($got, $expected, $desc);
}

# ----------------------------------------------------------------- helpers

sub find_in_path {
    my $cmd = shift;
    for my $dir (split /:/, $ENV{PATH} // '') {
        return "$dir/$cmd" if $dir ne '' && -f "$dir/$cmd" && -x _;
    }
    return undef;
}

# "1.5", "2s" and "50ms" are accepted, as in the real module.
sub parse_time {
    my $t = shift;
    return undef unless defined $t;
    $t =~ s/^\s+|\s+$//g;
    return $1 / 1000 if $t =~ /^([\d.]+)ms$/;
    $t =~ s/s$//;
    return $t;
}

sub fmt_str {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

sub trim {
    my $s = shift;
    return undef unless defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\s+/ /g;
    return $s;
}

sub slurp {
    open my $fh, '<', shift or return '';
    local $/;
    return scalar(<$fh>) // '';
}

# Alive and not a zombie: a daemonised nginx is not our child, and nobody
# reaps it when no init runs (hence `tini -s` in util/test.sh).
sub is_running {
    my $pid = shift;
    return 0 unless $pid && kill(0, $pid);
    waitpid($pid, WNOHANG);
    return 0 if slurp("/proc/$pid/stat") =~ /^\d+ \(.*\) [ZX]/s;
    return kill(0, $pid) ? 1 : 0;
}

sub read_pid { slurp($PidFile) =~ /^\s*(\d+)/ ? $1 : undef }

# $TEST_NGINX_FOO -> $ENV{TEST_NGINX_FOO} (unset: the run stops);
# $TEST_NGINX_RAND_PORT_N -> a free port, the same throughout the block.
sub expand_env {
    my ($text, $name, $rand) = @_;
    return undef unless defined $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        if ($var =~ /^TEST_NGINX_RAND_PORT_\d+$/) {
            $rand->{$var} //= free_port($rand);
        } else {
            defined $ENV{$var} ? $ENV{$var}
                : bail_out("$name - No environment $var defined.\n");
        }
    }ge;
    return $text;
}

sub free_port {
    my $used = shift;
    my %taken = map { $_ => 1 } $ServerPort, values %$used;
    for (1 .. 1000) {
        my $port = 1985 + int rand 60000;
        next if $taken{$port};
        my $s = IO::Socket::INET->new(LocalAddr => $ServerAddr,
                                      LocalPort => $port, Proto => 'tcp');
        return $port if $s && $s->close;
    }
    bail_out("Cannot find a free port");
}

# ------------------------------------------------------------ server root

sub setup_server_root {
    remove_tree($ConfDir, $HtmlDir, $LogDir, glob("$ServRoot/*_temp"),
                glob("$ServRoot/*_cache"));
    for my $d ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        -d $d or mkdir $d or bail_out("Failed to mkdir $d: $!");
    }
    open my $out, '>', "$HtmlDir/index.html" or bail_out("$HtmlDir: $!");
    print $out '<html><head><title>It works!</title></head><body>It works!</body></html>';
    close $out;
}

# --- user_files: ">>> name [touch -t date]" lines, or [[name, body, date]].
sub write_user_files {
    my ($block, $rand) = @_;
    my $files = $block->user_files or return;
    my $name = $block->name;
    if (!ref $files) {
        my @list;
        for my $line (split /^/, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$1, '', $2];
            } elsif (@list) {
                $list[-1][1] .= $line;
            }
        }
        $files = \@list;
    }
    for my $f (@$files) {
        my ($fname, $body, $date) = @$f;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        make_path($1) if $path =~ m{(.*)/} && !-d $1;
        open my $out, '>', $path or bail_out("$name - cannot write $path: $!");
        binmode $out;
        print $out expand_env($body // '', $name, $rand);
        close $out;
        system('touch', '-t', $date, $path) == 0
            or bail_out("$name - touch -t $date $path failed") if $date;
    }
}

sub write_config_file {
    my ($block, $config, $rand, $daemon) = @_;
    my $name = $block->name;
    my $main = expand_env($block->main_config // '', $name, $rand);
    my $http = expand_env($block->http_config // '', $name, $rand);
    my $post = expand_env($block->post_main_config // '', $name, $rand);
    my $errlog = $block->error_log_file || $ErrLogFile;
    my $server_name = $block->server_name // $ServerName;
    my $listen = $ServerPort . ($ENV{TEST_NGINX_REUSE_PORT} ? ' reuseport' : '');
    # as in the real module, load_module lines follow the block's main_config
    $main .= join '', map { "\nload_module $_;" }
                      split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '';
    my $env = join '', map { /\s/ ? "env '$_';\n" : "env $_;\n" }
                       qw(LD_PRELOAD LD_LIBRARY_PATH ASAN_OPTIONS), @EnvToNginx;
    my $root = $NoRootLocation ? '' : "        location / {\n"
        . "            root $HtmlDir;\n            index index.html index.htm;\n"
        . "        }\n";
    my $use = $ENV{TEST_NGINX_EVENT_TYPE} ? "    use $ENV{TEST_NGINX_EVENT_TYPE};\n" : '';
    my $user = $> == 0 ? "user root;\n" : '';

    open my $out, '>', $ConfFile or bail_out("Can't write $ConfFile: $!");
    print $out <<"_EOC_";
worker_processes  $Workers;
daemon $daemon;
master_process $MasterProcess;
error_log $errlog $LogLevel;
pid       $PidFile;
$env
$main

http {
    access_log $AccLogFile;

    default_type text/plain;
    keepalive_timeout  68;

$http

    server {
        listen          $listen;
        server_name     '$server_name';

        client_max_body_size 30M;

$ConfigPreamble
        # Begin test case config...
$config
        # End test case config.

$root    }
}

$post

events {
    accept_mutex off;
    worker_connections  $WorkerConnections;
$use}
$user
_EOC_
    close $out;
}

# ------------------------------------------------------- nginx life cycle

# -e: what nginx logs before nginx.conf's error_log is open (config errors)
# goes to logs/error.log, as with a stock build (Debian's goes to stderr).
sub nginx_cmd {
    my $cmd = "$NginxBinary -p '$ServRoot/' -c '$ConfFile'";
    $cmd .= " -e '$ErrLogFile'" if ($NginxVersion // 0) >= 1.019005;
    return $cmd;
}

sub stop_nginx {
    my ($name) = @_;
    my $pid = read_pid() // $ChildPid;
    if ($pid && is_running($pid)) {
        kill SIGQUIT, $pid;
        my $deadline = time + ($UseValgrind ? 30 : $Timeout) * $TimeoutScale;
        sleep 0.01 while is_running($pid) && time < $deadline;
        if (is_running($pid)) {
            warn "$name - timeout when waiting for the nginx process $pid to exit\n";
            # nginx and valgrind lead their own process group (with workers)
            kill SIGKILL, (getpgrp($pid) == $pid ? -$pid : $pid);
            sleep 0.01 while is_running($pid) && time < $deadline + 3;
        }
    }
    waitpid($ChildPid, 0) if defined $ChildPid;
    undef $ChildPid;
    unlink $PidFile;
    check_shutdown_error_log($PrevBlock) if $PrevBlock;
    undef $PrevBlock;
}

sub start_nginx {
    my ($name) = @_;
    my $cmd = nginx_cmd();
    if ($UseValgrind) {     # daemon off: valgrind is our child
        my $opts = $UseValgrind =~ /^\d+$/
            ? '--tool=memcheck --leak-check=full --show-possibly-lost=no'
              . ' --keep-debuginfo=yes'
            : $UseValgrind;
        $opts .= ' --suppressions=valgrind.suppress' if -f 'valgrind.suppress';
        $cmd = "valgrind --num-callers=100 -q $opts --gen-suppressions=all $cmd";
        warn "$name\n";     # places valgrind's reports on stderr
        my $pid = fork // bail_out("$name - fork failed: $!");
        if ($pid == 0) {
            setpgrp(0, 0);
            open STDOUT, '>', '/dev/null';
            exec "exec $cmd" or POSIX::_exit(127);
        }
        $ChildPid = $pid;   # connect_server() waits for the port
        return;
    }
    my $deadline = time + 5 * $TimeoutScale;
    while (1) {
        system("$cmd > /dev/null 2> '$StderrFile'");
        return if $? == 0;
        my $err = slurp($StderrFile);
        next if $err =~ /Address already in use/ && time < $deadline && sleep 0.1;
        bail_out("$name - Cannot start nginx using command \"$cmd\""
                 . " (status code $?): $err");
    }
}

sub cleanup {
    return if $$ != $MainPid;
    $_->() for @CleanupHandlers;
    @CleanupHandlers = ();
}

END {
    if ($$ == $MainPid && $Started) {
        local $?;
        cleanup();
        stop_nginx('END') if $UseValgrind || !$ENV{TEST_NGINX_NO_CLEAN};
    }
}

# ------------------------------------------------------------- main loop

sub run_tests {
    $Started = 1;
    my $v = `$NginxBinary -v 2>&1` // '';
    $v =~ m{/(\d+)\.(\d+)\.(\d+)}
        or bail_out("Failed to get the version of nginx ($NginxBinary): $v");
    $NginxVersion = sprintf "%d.%03d%03d", $1, $2, $3;
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;
    my @blocks = Test::Base::blocks();    # handles ONLY, SKIP, LAST
    @blocks = shuffle @blocks unless $NoShuffle;
    for my $block (@blocks) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value(name => "$0 " . $block->name);
        run_block($block);
    }
    cleanup();
}

sub run_block {
    my $block = shift;
    my $name = $block->name;

    for my $s (@Unsupported) {
        bail_out("$name - section '--- $s' is not supported by the bundled"
                 . " Test::Nginx::Socket (t/lib); install the real one")
            if defined $block->$s;
    }

    if (defined(my $spec = $block->skip_eval)) {    # "N: perl code"
        $spec =~ /^\s*(\d+)\s*:\s*(.*)/s or bail_out("$name - bad --- skip_eval");
        my ($n, $code) = ($1, $2);
        my $skip = eval $code;
        bail_out("$name - skip_eval - failed to eval \"$code\": $@") if $@;
        if ($skip) {
            SKIP: { Test::More::skip("$name - skip_eval", $n * $RepeatEach) }
            return;
        }
    }

    my %rand;
    my $config = expand_env(scalar $block->config, $name, \%rand);
    local $LogLevel = $block->log_level || $LogLevel;
    my $must_die = $block->must_die;

    # no --- config: keep using the running nginx (the previous block's)
    my $reuse = !defined $config;
    $config //= $PrevConfig // bail_out("$name - No '--- config' section"
                                        . " specified and could not get previous one");
    if (!is_running(read_pid() // $ChildPid // 0) || defined $must_die
        || !$reuse && ($ForceRestart || $config ne ($PrevConfig // '')))
    {
        stop_nginx($name);
        $PrevConfig = $config;
        setup_server_root();
        write_user_files($block, \%rand);
        my $daemon = (!$UseValgrind || defined $must_die) ? 'on' : 'off';
        write_config_file($block, $config, \%rand, $daemon);
        if (defined $must_die) {
            run_must_die($block, $must_die);
            undef $PrevConfig;
            return;
        }
        start_nginx($name);
    }

    if (defined $block->init) {
        eval $block->init;
        bail_out("$name - init failed: $@") if $@;
    }

    $ErrLogFilePos = 0;
    for my $i (0 .. $RepeatEach - 1) {
        write_user_files($block, \%rand) if $i > 0;
        run_requests($block, $i);
    }

    if (my $all = $ENV{TEST_NGINX_ERROR_LOG}) {
        if (open my $out, '>>', $all) {
            print $out "\n=== $name\n", slurp($ErrLogFile);
        }
    }
    $PrevBlock = $block;
    stop_nginx($name) if $UseValgrind;    # valgrind reports at exit
}

# --- must_die: start-up must fail (or exit with the given code).
sub run_must_die {
    my ($block, $must_die) = @_;
    my $name = $block->name;
    $ErrLogFilePos = 0;
    for my $i (0 .. $RepeatEach - 1) {
        system(nginx_cmd() . " > /dev/null 2>> '$StderrFile'");
        my $status = $?;
        if ($status == -1) {
            Test::More::fail("$name - failed to execute the nginx command line");
        } elsif ($status & 128) {
            Test::More::fail("$name - nginx core dumped");
        } elsif ($must_die =~ /^\s*(\d+)\s*$/) {
            Test::More::is($1, $status >> 8, "$name - die with the expected exit code");
        } else {
            Test::More::isnt($status, 0, "$name - die as expected");
        }
        check_error_log($block, $i);
        if ($status == 0) {
            warn "WARNING: $name - nginx must die but it does not; killing it (req $i)\n";
            stop_nginx($name);
        }
    }
}

# ------------------------------------------------------------- requests

sub parse_more_headers {
    my ($out, $chunked) = ('', 0);
    for my $line (split /\n+/, shift // '') {
        next if $line =~ /^\s*#/;
        my ($k, $v) = split /:\s*/, $line, 2;
        $v //= '';
        $chunked = 1 if lc($k) eq 'transfer-encoding' && $v eq 'chunked';
        $out .= "$k: $v\r\n";
    }
    return ($out, $chunked);
}

# "METHOD [/uri [HTTP/x.y]]\nbody", maybe split in packets, becomes: request
# line, Host, Connection, more_headers, Content-Length (unless chunked or
# given; the body is then trimmed), blank line, body.  Packet boundaries are
# kept at the same places of the rewritten request.
sub build_request {
    my ($name, $packets, $more, $conn) = @_;
    my $src = join '', @$packets;
    my ($hdr, $chunked) = parse_more_headers($more);
    $src =~ /\A[ \t]*(\S+)[ \t]*(?:(\S+)[ \t]*)?(?:(\S+)[ \t]*)?(?:\r?\n|\z)/
        or bail_out("$name - Request line is not valid. Should be"
                    . " 'meth [url [version]]' but got \"$src\".");
    my ($meth, $url, $ver, $head_len) = ($1, $2 // '/', $3 // 'HTTP/1.1', $+[0]);
    my $body = substr $src, $head_len;
    my ($ltrim, $cl) = (0, '');
    if (!$chunked && $body ne '' && $hdr !~ /(?:^|\n)Content-Length:/i) {
        $ltrim = length(($body =~ /\A(\s*)/)[0]);
        $body =~ s/^\s+|\s+$//g;
        $cl = "Content-Length: " . length($body) . "\r\n";
    }
    my $head = "$meth $url $ver\r\n";
    $head .= "Host: $ServerName\r\n" if $hdr !~ /(?:^|\n)Host:/i;
    $head .= "Connection: $conn\r\n" if $hdr !~ /(?:^|\n)Connection/i;
    $head .= "$hdr$cl\r\n";
    my $wire = $head . $body;
    my ($from, $off, @out) = (0, 0);
    for my $p (@$packets[0 .. $#$packets - 1]) {
        $off += length $p;
        my $to = $off <= $head_len ? min(length $head, $off)
               : length($head) + min(length $body, max(0, $off - $head_len - $ltrim));
        push @out, substr($wire, $from, $to - $from);
        $from = $to;
    }
    return [@out, substr($wire, $from)];
}

# The block's requests: a list of connections, each a list of packets
# ({value => bytes, delay_before => seconds}).
sub requests_of {
    my $block = shift;
    my $name = $block->name;
    my $more = $block->more_headers;
    my $more_for = sub {
        return $more unless ref $more eq 'ARRAY';
        return $more->[$_[0]] // bail_out("$name - --- more_headers lacks data"
                                          . " for request $_[0]");
    };

    if (defined(my $raw = $block->raw_request)) {
        return [map { {value => $_} } ref $raw eq 'ARRAY' ? @$raw : ($raw)];
    }
    if (defined(my $reqs = $block->pipelined_requests)) {
        bail_out("$name - invalid entries in --- pipelined_requests")
            unless ref $reqs eq 'ARRAY';
        return [{value => join '', map {
            build_request($name, [$reqs->[$_]], $more_for->($_),
                          $_ == $#$reqs ? 'close' : 'keep-alive')->[0]
        } 0 .. $#$reqs}];
    }

    my $req = $block->request;
    bail_out("$name - request empty") unless defined $req;
    if (!ref $req) {
        1 while $req =~ s/^\s*#[^\n]+\s+|^\s+//s;    # leading comments
        $req = [$req];
    }
    bail_out("$name - invalid --- request: MUST be string or array of requests")
        unless ref $req eq 'ARRAY';
    my @list;
    for my $i (0 .. $#$req) {
        my @parts = map { ref $_ eq 'HASH' ? $_ : {value => $_} }
                    ref $req->[$i] eq 'ARRAY' ? @{ $req->[$i] } : ($req->[$i]);
        my $wire = build_request($name, [map { $_->{value} } @parts],
                                 $more_for->($i), 'close');
        push @list, [map { +{ %{ $parts[$_] }, value => $wire->[$_] } } 0 .. $#$wire];
    }
    return @list;
}

sub connect_server {
    my ($name) = @_;
    my $deadline = time + ($UseValgrind ? 60 : 5) * $TimeoutScale;
    my $delay = $TestNginxSleep;
    while (1) {
        my $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr,
                                         PeerPort => $ServerPortForClient,
                                         Proto => 'tcp', Timeout => $Timeout);
        return $sock if $sock;
        my ($err, $pid) = ($!, read_pid());
        if (time >= $deadline || $ChildPid && waitpid($ChildPid, WNOHANG) == $ChildPid
            || !$UseValgrind && $pid && !is_running($pid))    # nginx died
        {
            Test::More::fail("$name - Can't connect to $ServerAddr:"
                             . "$ServerPortForClient: $err (aborted)\n");
            return undef;
        }
        sleep $delay;
        $delay = min($delay * 2, 0.5);
    }
}

# Sends one request's packets and reads until the server closes.  The
# timeout is an idle timeout (between two I/O events), not a total.
sub send_request {
    my ($block, $bits, $timeout) = @_;
    my $name = $block->name;
    local $SIG{PIPE} = 'IGNORE';
    my $sock = connect_server($name) or return undef;
    $sock->blocking(0);
    my @bits = @$bits;
    my $wbuf = (shift @bits)->{value};
    my $resp = '';
    my $sel = IO::Select->new($sock);
    while (1) {
        my ($r, $w) = IO::Select->select($sel, defined $wbuf ? $sel : undef,
                                         undef, $timeout);
        if (!$r && !$w) {
            Test::More::fail("ERROR: client socket timed out - $name\n")
                unless defined $block->abort;
            last;
        }
        if ($w && @$w) {
            my $n = syswrite $sock, $wbuf;
            if (!defined $n) {
                next if $! == EAGAIN || $! == EWOULDBLOCK;
                warn "$name - write failed: $!\n";
                last;
            }
            substr($wbuf, 0, $n) = '';
            next if $wbuf ne '';
            undef $wbuf;
            if (my $next = shift @bits) {
                my $delay = $next->{delay_before} // $block->raw_request_middle_delay;
                sleep $delay if $delay;
                $wbuf = $next->{value};
            } elsif (defined(my $how = $block->shutdown)) {
                shutdown $sock, ($how =~ /(\d)/ ? $1 : 1);
            }
        }
        if ($r && @$r) {
            my $n = sysread $sock, my $buf, 65536;
            if (!defined $n) {
                next if $! == EAGAIN || $! == EWOULDBLOCK;
                warn "WARNING: $name - HTTP response read failure: $!\n";
                last;
            }
            last if $n == 0;
            $resp .= $buf;
        }
    }
    close $sock;
    return $resp;
}

# Parses a response off the front of $raw: (HTTP::Response, or undef when
# the chunked body is broken or unfinished; raw header text; leftover bytes).
sub parse_response {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = $raw =~ /(.*?\r\n)\r\n/s ? $1 : '';
    my $res = HTTP::Response->parse($raw);
    $res->code(undef) if defined $res->code && $res->code !~ /^\d+$/;
    return ($res, $raw_headers) if ($res->code // 0) =~ /^(?:304|101)$/;

    my $body = $res->content // '';
    my $len = $res->header('Content-Length');
    my $left;
    if (($res->header('Transfer-Encoding') // '') eq 'chunked') {
        my ($out, $err) = ('');
        pos($body) = 0;
        while (!defined $err) {
            if ($body !~ /\G[ \t]*([0-9A-Fa-f]+)[^\r\n]*\r\n/gc) {
                $err = $body =~ /\G\z/gc ? "no last chunk found - $body"
                     : "invalid chunked body received: " . fmt_str(substr $body, pos $body);
                last;
            }
            my ($size, $at) = (hex $1, pos $body);
            if ($size == 0) {
                if ($body =~ /\G(?:[^\r\n]+\r\n)*\r\n/gc) {    # trailers
                    $left = substr $body, pos $body;
                } else {
                    $err = "no last chunk found - $body";
                }
                last;
            }
            $err = "invalid chunked data received (not enough octets for the data"
                   . " section)" if length($body) - $at < $size;
            $err //= "invalid chunked data received (expected CRLF)."
                if substr($body, $at + $size, 2) ne "\r\n";
            $out .= substr $body, $at, $size;
            pos($body) = $at + $size + 2;
        }
        if (defined $err) {
            Test::More::fail("$name - $err");
            return (undef, $raw_headers);
        }
        $res->content($out);
    } elsif (defined $len && $len =~ /^\d+$/) {
        if (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, but got "
                 . length($body) . "\n" unless $head_req;
        } elsif (length $body > $len) {
            $left = substr $body, $len;
            $res->content(substr $body, 0, $len);
        }
    }
    return ($res, $raw_headers, $left);
}

sub run_requests {
    my ($block, $rep) = @_;
    my $name = $block->name;
    my @reqs = requests_of($block);
    my $timeout = (parse_time(scalar $block->timeout) // $Timeout) * $TimeoutScale;
    my $pipelined = $block->pipelined_requests;
    my $n = $pipelined ? @$pipelined : 1;
    my $need_array = $pipelined || @reqs > 1;
    my $idx = 0;
    for my $r (0 .. $#reqs) {
        my $raw = send_request($block, $reqs[$r], $timeout) // '';
        my $head_req = $reqs[$r][0]{value} =~ /^\s*HEAD\s/;
        for my $k (1 .. $n) {
            my ($res, $raw_headers, $left);
            if (!defined $block->ignore_response) {
                ($res, $raw_headers, $left) = parse_response($name, $raw, $head_req);
                check_response($block, $res, $raw_headers, $idx, $rep, $need_array);
            }
            if ($pipelined) {
                $raw = $left // '';
            } elsif (defined $left && $left ne '') {
                warn "WARNING: $name - unexpected extra bytes after last chunk in"
                     . " response: \"" . fmt_str($left) . "\"\n";
            }
            if ($k < $n || $r < $#reqs) {    # as the real module does
                sleep $block->wait if $block->wait;
                check_error_log($block, $rep);
            }
            $idx++;
        }
    }
    sleep $block->wait if $block->wait;
    check_error_log($block, $rep);
}

# ------------------------------------------------------------ assertions

# A section's value for request $idx: arrays are required with several requests.
sub indexed {
    my ($block, $section, $idx, $need_array) = @_;
    my $value = $block->$section;
    return $value->[$idx] if ref $value eq 'ARRAY' && ($need_array || $idx == 0);
    return $value if ref $value ne 'ARRAY' && !$need_array;
    bail_out($block->name . " - You asked for many requests, the expected"
             . " results should be arrays as well.");
}

sub subst_port {
    my $s = shift;
    $s =~ s/\$ServerPort\b/$ServerPort/g;
    $s =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
    return $s;
}

sub check_response {
    my ($block, $res, $raw_headers, $i, $rep, $arr) = @_;
    my $name = $block->name;
    my $code = ($res && $res->code) || '';
    $raw_headers //= '';

    if (defined $block->error_code_like) {
        my $pat = indexed($block, 'error_code_like', $i, $arr);
        Test::More::like($code, qr/$pat/sm, "$name - status code ok");
    } else {
        my $want = defined $block->error_code ? indexed($block, 'error_code', $i, $arr) : 200;
        Test::More::is($code, $want, "$name - status code ok");
    }
    if (defined $block->raw_response_headers_like) {
        my $pat = indexed($block, 'raw_response_headers_like', $i, $arr);
        Test::More::like($raw_headers, qr/$pat/s, "$name - raw resp headers like");
    }
    if (defined $block->raw_response_headers_unlike) {
        my $pat = indexed($block, 'raw_response_headers_unlike', $i, $arr);
        Test::More::unlike($raw_headers, qr/$pat/s, "$name - raw resp headers unlike");
    }

    my $like = !defined $block->response_headers;
    if (defined $block->response_headers || defined $block->response_headers_like) {
        my $want = parse_headers(indexed($block, $like ? 'response_headers_like'
                                                       : 'response_headers', $i, $arr));
        for my $key (sort keys %$want) {
            my $got = ($res ? scalar $res->header($key) : undef) // '';
            my $val = $want->{$key};
            if ($like) {
                $val //= '';
                Test::More::like($got, qr/^$val$/, "$name - header $key like ok");
            } elsif (!defined $val) {
                Test::More::unlike($raw_headers, qr/^\s*\Q$key\E\s*:/ms,
                                   "$name - header $key not present in the raw headers");
            } else {
                Test::More::is($got, subst_port($val), "$name - header $key ok");
            }
        }
    }

    my $content = $res ? $res->content : undef;
    if (defined $block->response_body) {    # the exact form wins over _like
        my $want = indexed($block, 'response_body', $i, $arr);
        if (ref $want) {
            Test::More::like($content, $want,
                "$name - response_body - like (repeated req $rep, req $i)");
        } else {
            is_str($content, defined $want ? subst_port($want) : undef,
                "$name - response_body - response is expected (repeated req $rep, req $i)");
        }
    } elsif (defined $block->response_body_like || defined $block->response_body_unlike) {
        my $type = defined $block->response_body_like ? 'like' : 'unlike';
        my $pat = subst_port(indexed($block, "response_body_$type", $i, $arr));
        my $check = $type eq 'like' ? \&Test::More::like : \&Test::More::unlike;
        $check->($content, qr/$pat/s, "$name - response_body_$type - response is"
                                      . " expected (" . (trim($content) // '') . ")");
    }
}

# "Name: value" lines; "!Name" / "! Name" means the header must be absent.
sub parse_headers {
    my %h;
    for my $line (split /\n/, shift // '') {
        $line =~ s/^\s+|\s+$//g;
        if ($line =~ s/^!\s*//) {
            $h{$line} = undef;
        } else {
            my ($k, $v) = split /\s*:\s*/, $line, 2;
            $h{$k} = $v;
        }
    }
    return \%h;
}

# Lines of a log; with $pos_ref, only those after *$pos_ref (then updated).
sub log_lines {
    my ($file, $pos_ref) = @_;
    sleep $TestNginxSleep * 3;    # log-phase lines come after the response
    open my $in, '<', $file or return [];
    seek $in, $$pos_ref, 0 if $pos_ref && $$pos_ref && !$CheckAccumErrLog;
    my @lines = <$in>;
    $$pos_ref = tell $in if $pos_ref && !$CheckAccumErrLog;
    return \@lines;
}

# A string is a substring to find in a line, a qr// a regex; a multi-line
# string or an array holds several.
sub patterns {
    my $p = shift;
    return [$p] if ref $p eq 'Regexp';
    return [@$p] if ref $p eq 'ARRAY';
    chomp $p;
    return [split /\n+/, $p];
}

sub line_matches { ref $_[1] ? $_[0] =~ $_[1] : index($_[0], $_[1]) >= 0 }

# error_log / no_error_log style checks over some log lines.
sub check_patterns {
    my ($name, $lines, $want, $dont, $file, $suffix) = @_;
    if (defined $want) {
        my @pats = @{ patterns($want) };
        for my $line (@$lines) {
            for my $pat (@pats) {
                next unless defined $pat && line_matches($line, $pat);
                Test::More::pass("$name - pattern \"$pat\" matches a line in $file$suffix");
                undef $pat;
            }
        }
        Test::More::fail("$name - pattern \"$_\" should match a line in $file$suffix")
            for grep { defined } @pats;
    }
    if (defined $dont) {
        my %found;
        my @pats = @{ patterns($dont) };
        for my $j (0 .. $#$lines) {
            for my $pat (grep { line_matches($lines->[$j], $_) } @pats) {
                $found{$pat} = 1;
                Test::More::fail("$name - pattern \"" . fmt_str($pat) . "\" should not"
                    . " match any line in $file but matches line \""
                    . fmt_str($lines->[$j]) . "\"$suffix\n"
                    . join '', @$lines[$j + 1 .. min($j + 9, $#$lines)]);
            }
        }
        Test::More::pass("$name - pattern \"" . fmt_str($_) . "\" does not match"
                         . " a line in $file$suffix") for grep { !$found{$_} } @pats;
    }
}

sub check_error_log {
    my ($block, $rep) = @_;
    my $name = $block->name;
    my $lines = log_lines($ErrLogFile, \$ErrLogFilePos);

    my $grep = $block->grep_error_log;
    my $want = $block->grep_error_log_out;
    if (defined $grep || defined $want) {
        bail_out("$name - --- grep_error_log and --- grep_error_log_out go together")
            unless defined $grep && defined $want;
        $grep = $grep->[$rep] if ref $grep eq 'ARRAY';
        $want = $want->[$rep] if ref $want eq 'ARRAY';
        my $got = '';
        for my $line (@$lines) {
            $got .= "$&\n" if (ref $grep ? $line =~ $grep : $line =~ /\Q$grep\E/)
                              && $& !~ /\n/;
        }
        is_str($got, $want, "$name - grep_error_log_out (req $rep)");
    }
    check_patterns($name, $lines, scalar $block->error_log,
                   scalar $block->no_error_log, 'error.log', " (req $rep)");
    if (defined $block->access_log || defined $block->no_access_log) {
        check_patterns($name, log_lines($AccLogFile), scalar $block->access_log,
                       scalar $block->no_access_log, 'access.log', " (req $rep)");
    }

    my $mentioned = join "\n", map { ref $_ eq 'ARRAY' ? @$_ : $_ } grep { defined }
                    scalar $block->error_log, scalar $block->no_error_log;
    for my $level (qw(alert crit emerg)) {
        next if $mentioned =~ /\[$level/;
        warn "WARNING: $name - ", fmt_str($_), "\n" for grep { /\[$level\]/ } @$lines;
    }
    /(\bAssertion .*?failed\b.*)/ and Test::More::fail("$name - $1") for @$lines;
}

# --- shutdown_error_log / --- no_shutdown_error_log of the block whose
# nginx has just been stopped.
sub check_shutdown_error_log {
    my $block = shift;
    return unless defined $block->shutdown_error_log
               || defined $block->no_shutdown_error_log;
    my $pos = $ErrLogFilePos;
    check_patterns($block->name, log_lines($ErrLogFile, \$pos),
                   scalar $block->shutdown_error_log,
                   scalar $block->no_shutdown_error_log, 'error.log', '');
}

1;
