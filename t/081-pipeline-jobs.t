# Pipeline jobs beyond one connection: a DELETE that stops the running
# step at once (on the worker that runs the job, on the other one, on
# another instance through Redis); resuming with Last-Event-ID in the
# middle of a pipeline from the other worker (memory store) and from
# another nginx instance (Redis store), the resumed stream being exactly
# the rest of the uninterrupted one; Redis restarted empty during a step;
# the job's JSON with its pipeline and steps.
#
# Each step has its own upstream, the mock, whose URL says what it
# answers (reply=, URL-encoded JSON for "output json" steps) and how fast
# (tokens=, tps=), with a tag per step for its counters.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       start_redis stop_redis);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $run = $$;
my $redis_pid;

# waitpid() would make the child's status the test's
END { local $?; stop_redis($redis_pid) }

my $up = "http://127.0.0.1:$mock/v1/chat/completions";

my $outline = '{"sections":["intro","body"]}';
my $review = '{"approved":true,"score":0.9}';

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

# the step "draft" streams "tokens" words at 20 a second
sub pipeline {
    my ($name, $tokens) = @_;
    my $o = uri_escape($outline);
    my $r = uri_escape($review);

    return <<"CONF";
    llm_pipeline $name {
        step outline {
            pass    "$up?tps=0&ttft=0&tag=${name}o$run&reply=$o";
            prompt  "Outline an article about \$llm_input_topic";
            output  json;
            stage   planning;
        }
        step draft {
            pass    "$up?tokens=$tokens&tps=20&ttft=0&tag=${name}d$run";
            prompt  "Sections: \${llm_step_outline.sections}";
            stream  on;
        }
        step review {
            pass    "$up?tps=0&ttft=0&tag=${name}r$run&reply=$r";
            prompt  "Review: \$llm_step_draft";
            output  json;
            check   approved = true;
            check   score >= 0.8;
        }
    }
CONF
}

sub stats {
    my ($tag) = @_;
    my (undef, undef, $b) = http_get($mock, 'GET', "/stats?tag=$tag$run");
    return decode_json($b || '{}');
}

sub wait_for {
    my ($cond, $secs) = @_;
    for (1 .. $secs * 20 * $slow) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return 0;
}


# streams read in steps: open, read up to a match, read to the end

sub stream_open {
    my ($port, $uri, %hdr) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
    my $h = join '', map { "$_: $hdr{$_}\r\n" } keys %hdr;
    syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n$h\r\n");

    return { sock => $s, got => '' };
}

sub stream_read {
    my ($st, $until, $secs) = @_;
    my $s = $st->{sock};

    while (!defined $until || $st->{got} !~ $until) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, ($secs // 10) * $slow);
        last unless sysread($s, my $buf, 65536);
        $st->{got} .= $buf;
    }

    return defined $until && $st->{got} =~ $until;
}

sub stream_rest {
    my ($st) = @_;
    stream_read($st, undef, 20);
    close $st->{sock};
    return body_of($st);
}

sub head_of { (split /\r\n\r\n/, $_[0]{got}, 2)[0] // '' }
sub body_of { (split /\r\n\r\n/, $_[0]{got}, 2)[1] // '' }

sub worker_of { (head_of($_[0]) =~ /^X-Worker: (\d+)/mi)[0] // '' }


# A DELETE on a worker that "want" accepts (given its pid): a GET on a
# kept-alive connection says which worker it reached, the DELETE follows
# on it.  Returns (status, body, worker), or nothing.

sub delete_on {
    my ($port, $uri, $want) = @_;

    for (1 .. 40) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or next;
        my $st = { sock => $s, got => '' };

        syswrite($s, "GET $uri HTTP/1.1\r\nHost: localhost\r\n"
                     . "Accept: application/json\r\n\r\n");

        stream_read($st, qr/\r\n\r\n/);
        my ($len) = head_of($st) =~ /^Content-Length: (\d+)/mi;
        my $w = worker_of($st);

        if (!defined $len || !$want->($w)) {
            close $s;
            next;
        }

        stream_read($st, qr/\r\n\r\n[\s\S]{$len}/);
        $st->{got} = '';
        syswrite($s, "DELETE $uri HTTP/1.1\r\nHost: localhost\r\n"
                     . "Connection: close\r\n\r\n");

        my $body = stream_rest($st);
        my ($status) = head_of($st) =~ m{^HTTP/1\.1 (\d+)};

        return ($status, $body, $w);
    }

    return;
}


# The complete events of an SSE body, each with its bytes ("raw"); heart
# beats are skipped.  A whole body (strict) must be nothing else after
# its retry line.

sub frames {
    my ($body, $strict) = @_;
    my @ev;

    $body =~ s/\Aretry: \d+\n\n// or $strict && return;

    while ($body =~ s/\A(?: :[^\n]*\n\n
                           | (id:\ ([^\n]+)\n event:\ (\w+)\n
                              data:\ ([^\n]*)\n\n) )//x)
    {
        next unless defined $1;
        push @ev, { raw => $1, id => $2, event => $3, data => $4 };
    }

    return if $strict && length $body;
    return @ev;
}

sub seq_of { ($_[0]{id} =~ /:(\d+)$/)[0] }

sub delta_text { decode_json($_[0]{data})->{text} }

# "got" (a resumed stream, a replay) against "want" (the events it must
# carry, from the uninterrupted stream): every event byte for byte, except
# that deltas a stream missed may come merged, as one delta with the id
# of the last and their texts joined.  Returns what differs first, or ''.

sub same_events {
    my ($got, $want) = @_;
    my $i = 0;

    for my $e (@$got) {
        my @cover;

        while ($i < @$want && $want->[$i]{id} ne $e->{id}) {
            push @cover, $want->[$i++];
        }

        return "event $e->{id} ($e->{event}) is not one of the stream's"
            if $i == @$want;

        push @cover, $want->[$i++];

        if (@cover == 1) {
            next if $e->{raw} eq $cover[0]{raw};
            return "event $e->{id} differs:\n$e->{raw}instead of\n"
                   . $cover[0]{raw};
        }

        return "event $e->{id} ($e->{event}) stands for "
               . join(',', map { $_->{id} } @cover)
            if grep { $_->{event} ne 'delta' } $e, @cover;

        my $text = join '', map { delta_text($_) } @cover;

        return "merged delta $e->{id}: wrong text"
            unless delta_text($e) eq $text;
    }

    return $i == @$want ? ''
           : 'missing from event ' . $want->[$i]{id} . ' on';
}

sub kinds { my %k; $k{$_->{event}}++ for @_; return \%k }


my $port = free_port();

my $cancel_conf = pipeline('pc', 400) . pipeline('px', 400);
my $p_conf = pipeline('pm', 60);

my $mem = start_nginx('pipejobs',
                      "daemon on;\nmaster_process on;\nworker_processes 2;\n"
                      . "worker_shutdown_timeout 1s;",
                      <<"HTTP");
$cancel_conf
$p_conf
    server {
        listen 127.0.0.1:$port reuseport;
        add_header X-Worker \$pid always;

        location = /cancel/pc {
            llm_model    m;
            llm_pipeline pc;
        }
        location = /cancel/px {
            llm_model    m;
            llm_pipeline px;
        }
        location = /p {
            llm_model    m;
            llm_pipeline pm;
        }
        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job \$job;
        }
    }
HTTP


# 1. DELETE while a slow step runs, on the worker that runs the job (it
#    cancels it at once) and on the other one (through the store)

for my $c (['pc', 'the running worker', 1], ['px', 'the other worker', 0]) {
    my ($name, $where, $same) = @$c;

    my $st = stream_open($port, "/cancel/$name?topic=cats");
    ok(stream_read($st, qr/"step":"draft".*\nevent: delta\n/s),
       "$name: the slow step streams");

    my ($job) = body_of($st) =~ /^id: ([\w-]{22}):1$/m;
    my $origin = worker_of($st);

    my ($s, $b, $w) = delete_on($port, "/jobs/$job",
                                sub { ($_[0] eq $origin) == $same });

    SKIP: {
        skip "no connection reached $where", 1 unless $s;
        is($s, $same ? 200 : 202, "DELETE on $where: $s");
    }

    my @ev = frames(stream_rest($st), 1);
    is($ev[-1]{event}, 'error', '  the stream ends with an error event');
    like($ev[-1]{data}, qr/"code":"cancelled"/, '  cancelled');

    ok(wait_for(sub { stats("${name}d")->{active} == 0 }, 5),
       '  the upstream request of the step is over');
    is(stats("${name}d")->{streams_aborted}, 1,
       '  aborted (it had 20 s to go)');
    is(stats("${name}d")->{streams_completed}, 0, '  not completed');
    is(stats("${name}r")->{requests}, 0, '  the next step never ran');

    my $h;
    ($s, $h, $b) = http_get($port, 'GET', "/jobs/$job",
                            headers => { Accept => 'application/json' });
    my $j = eval { decode_json($b) } || {};

    is($s, 200, '  the job as JSON');
    is($j->{state}, 'cancelled', '  cancelled');
    is($j->{error}{code}, 'cancelled', '  its error');
    is($j->{pipeline}, $name, '  its pipeline');
    is_deeply([map { $_->{name} } @{ $j->{steps} || [] }],
              [qw(outline draft review)], '  its steps');

    my ($o, $d, $r) = map { $_ || {} } @{ $j->{steps} || [] };
    is($o->{state}, 'done', '  the first step: done');
    is_deeply($o->{output}, decode_json($outline), '    with its output');
    is($o->{attempts}, 1, '    in one attempt');
    ok($d->{state} && $d->{state} ne 'done',
       '  the cancelled step: not done (' . ($d->{state} // '') . ')');
    is($d->{output}, undef, '    no output');
    is($r->{state}, 'pending', '  the last step: pending');
}


# 2. resume in the middle of the pipeline from the other worker

my $st = stream_open($port, '/p?topic=cats');
ok(stream_read($st, qr/"step":"draft".*(\nevent: delta\n.*){2}\n\n/s),
   'a pipeline streams its second step');

my @head = frames(body_of($st));
my $origin = worker_of($st);
my ($job) = $head[0]{id} =~ /^([\w-]{22}):1$/;
my $n = seq_of($head[-1]);

ok($job && $n > 6, "resume after event $n");

my ($other, $res);

for (1 .. 40) {
    my $t = stream_open($port, '/p', 'Last-Event-ID' => "$job:$n");
    stream_read($t, qr/\r\n\r\n/);

    if (worker_of($t) && worker_of($t) ne $origin) {
        $other = worker_of($t);
        $res = $t;
        last;
    }

    close $t->{sock};
}

my @all = frames(stream_rest($st), 1);
my @tail = grep { seq_of($_) > $n } @all;

is($all[-1]{event}, 'complete', 'the uninterrupted stream completes');

SKIP: {
    skip 'no connection reached the other worker', 6 unless $other;

    my @rest = frames(stream_rest($res), 1);

    ok(@rest, "the other worker ($other) resumes");
    cmp_ok(seq_of($rest[0]), '>', $n, '  after the given event');
    is(same_events(\@rest, \@tail), '',
       '  exactly the rest of the stream, byte for byte');

    my %seen;
    is(scalar(grep { $seen{$_->{id}}++ } @head, @rest), 0, '  no event twice');

    my $k = kinds(@rest);
    ok($k->{delta} && $k->{step} && $k->{step_start} && $k->{progress}
       && $k->{check} && $k->{complete},
       '  deltas, step, step_start, progress, check events: '
       . join(',', sort keys %$k));
    is($rest[-1]{event}, 'complete', '  to the end');
}

# the finished job from its start, on any worker

for my $i (1 .. 2) {
    my $t = stream_open($port, "/jobs/$job", Accept => 'text/event-stream');
    my @replay = frames(stream_rest($t), 1);
    is(same_events(\@replay, \@all), '',
       "replay $i (worker " . worker_of($t) . '): the same stream');
}


# 3. the job of a finished pipeline as JSON

my ($s, $h, $b) = http_get($port, 'GET', "/jobs/$job",
                        headers => { Accept => 'application/json' });
my $j = eval { decode_json($b) } || {};
my $text = decode_json($all[-1]{data})->{text};

is($s, 200, 'a finished pipeline as JSON');
is($j->{state}, 'completed', '  completed');
is($j->{pipeline}, 'pm', '  "pipeline"');
is($j->{text}, $text, '  its text');
is_deeply([map { [$_->{name}, $_->{state}, $_->{attempts}] }
               @{ $j->{steps} || [] }],
          [['outline', 'done', 1], ['draft', 'done', 1],
           ['review', 'done', 1]],
          '  "steps": names, states, attempts');
is_deeply([map { $_->{output} } @{ $j->{steps} || [] }],
          [decode_json($outline), $text, decode_json($review)],
          '  and outputs');

stop_nginx($mem);
unlike(error_log($mem), qr/\[(alert|crit|emerg)\]/, 'memory store: no alerts');


# Redis: two instances share a private redis-server

SKIP: {
    skip 'redis-server and redis-cli are needed', 1
        unless grep { -x "$_/redis-server" && -x "$_/redis-cli" }
                    split /:/, $ENV{PATH};

    my $rport = free_port();

    my $redis_start = sub { $redis_pid = start_redis($rport) };
    my $redis_stop = sub { stop_redis($redis_pid); undef $redis_pid };

    my $rcli = sub {
        open my $fh, '-|', 'redis-cli', '-p', $rport, '--raw', @_ or die $!;
        my $out = do { local $/; <$fh> } // '';
        close $fh;
        $out =~ s/\n\z//;
        return $out;
    };

    # commands in one MULTI/EXEC: EXEC's answer (arrays as array refs)
    my $resp;
    $resp = sub {
        my ($s) = @_;
        my $line = <$s> // return;
        $line =~ s/\r\n\z//;
        my ($t, $v) = (substr($line, 0, 1), substr($line, 1));

        return $v if $t eq '+' || $t eq ':' || $t eq '-';
        return if $v < 0;

        if ($t eq '$') {
            read($s, my $b, $v + 2);
            return substr($b, 0, $v);
        }

        return [map { $resp->($s) } 1 .. $v];
    };

    my $redis_multi = sub {
        my @cmds = (['MULTI'], @_, ['EXEC']);
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$rport")
            or return;

        print $s join '', map {
            '*' . @$_ . "\r\n"
            . join('', map { '$' . length($_) . "\r\n$_\r\n" } @$_)
        } @cmds;

        my @r = map { $resp->($s) } @cmds;
        close $s;
        return $r[-1];
    };

    my $hash = sub {
        my %h = split /\n/, $rcli->('HGETALL', "t081:{$_[0]}:job"), -1;
        return \%h;
    };

    $redis_start->();

    my $rconf = pipeline('pr', 60) . pipeline('pk', 40) . pipeline('pz', 400);

    my $http = sub {
        my ($p) = @_;
        return <<"HTTP";
    llm_store redis://127.0.0.1:$rport ttl=10m prefix=t081:;
$rconf
    server {
        listen 127.0.0.1:$p;

        location = /p {
            llm_model    m;
            llm_pipeline pr;
        }
        location = /k {
            llm_model    m;
            llm_pipeline pk;
        }
        location = /z {
            llm_model    m;
            llm_pipeline pz;
        }
        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job \$job;
        }
    }
HTTP
    };

    my $main = "daemon on;\nmaster_process on;\nworker_processes 1;\n"
               . "worker_shutdown_timeout 5s;";
    my ($pa, $pb) = (free_port(), free_port());
    my $ra = start_nginx('pipejobs_a', $main, $http->($pa));
    my $rb = start_nginx('pipejobs_b', $main, $http->($pb));


    # 4. resume on B in the middle of a pipeline that A runs

    $st = stream_open($pa, '/p?topic=cats');
    ok(stream_read($st, qr/"step":"draft".*(\nevent: delta\n.*){2}\n\n/s),
       'Redis: A streams the second step');

    @head = frames(body_of($st));
    ($job) = $head[0]{id} =~ /^([\w-]{22}):1$/;
    $n = seq_of($head[-1]);

    # B can resume from what Redis has (the next flush)
    wait_for(sub { ($hash->($job)->{nevents} // 0) >= $n }, 2);

    my $t = stream_open($pb, '/p', 'Last-Event-ID' => "$job:$n");
    my @rest = frames(stream_rest($t), 1);

    @all = frames(stream_rest($st), 1);
    @tail = grep { seq_of($_) > $n } @all;

    is($all[-1]{event}, 'complete', 'the stream on A completes');
    cmp_ok(seq_of($rest[0] // { id => ':0' }), '>', $n,
           "B resumes after event $n");
    is(same_events(\@rest, \@tail), '',
       '  with exactly the rest of the stream, byte for byte');

    my %seen;
    is(scalar(grep { $seen{$_->{id}}++ } @head, @rest), 0,
       '  no event twice');

    my $k = kinds(@rest);
    ok($k->{delta} && $k->{step} && $k->{step_start} && $k->{progress}
       && $k->{check} && $k->{complete},
       '  deltas, step, step_start, progress, check events: '
       . join(',', sort keys %$k));

    ok(wait_for(sub { ($hash->($job)->{state} // '') eq 'completed' }, 3),
       'the job is completed in Redis');

    $t = stream_open($pb, "/jobs/$job", Accept => 'text/event-stream');
    is(same_events([frames(stream_rest($t), 1)], \@all), '',
       'B replays the finished job: the same stream');


    # 5. a DELETE on B stops the step that A runs

    $st = stream_open($pa, '/z?topic=cats');
    ok(stream_read($st, qr/"step":"draft".*\nevent: delta\n/s),
       'A runs a slow step');
    ($job) = body_of($st) =~ /^id: ([\w-]{22}):1$/m;

    wait_for(sub { ($hash->($job)->{state} // '') eq 'running' }, 2);

    my ($s) = http_get($pb, 'DELETE', "/jobs/$job");
    is($s, 202, 'DELETE on B: passed on through Redis');

    @all = frames(stream_rest($st), 1);
    like($all[-1]{data}, qr/"code":"cancelled"/,
         'the stream on A ends: cancelled');
    ok(wait_for(sub { stats('pzd')->{active} == 0 }, 5),
       '  the upstream request of the step is over');
    is(stats('pzd')->{streams_aborted}, 1, '  aborted');
    is(stats('pzr')->{requests}, 0, '  the next step never ran');

    ok(wait_for(sub { ($hash->($job)->{state} // '') eq 'cancelled' }, 3),
       'cancelled in Redis');

    my $j = eval { decode_json((http_get($pb, 'GET', "/jobs/$job",
                       headers => { Accept => 'application/json' }))[2]) }
            || {};
    is_deeply([map { $_->{state} } @{ $j->{steps} || [] }],
              [qw(done interrupted pending)], '  B shows its steps');


    # 6. Redis restarted empty while a step of a pipeline runs

    $st = stream_open($pa, '/k?topic=dogs');
    ok(stream_read($st, qr/"step":"draft".*\nevent: delta\n/s),
       'a slow step runs');

    @head = frames(body_of($st));
    ($job) = $head[0]{id} =~ /^([\w-]{22}):1$/;

    ok(wait_for(sub { ($hash->($job)->{nevents} // 0) >= @head }, 2),
       'Redis has the job up to the step');

    $redis_stop->();
    $redis_start->();

    # The keep-alive write finds the job lost and writes it all again.
    # What Redis has from then on is the job whole, never a part that
    # readers would take for it: the first record seen is checked.

    my $k4 = "t081:{$job}";
    my $rec;

    for (1 .. 500 * $slow) {
        $rec = $redis_multi->(['HGETALL', "$k4:job"],
                              ['XRANGE', "$k4:events", '-', '+', 'COUNT', 1],
                              ['GET', "$k4:text"], ['GET', "$k4:meta"],
                              ['GET', "$k4:pstate"]);
        last if $rec && ref $rec->[0] && @{ $rec->[0] };
        sleep 0.01;
    }

    my %rh = @{ $rec->[0] || [] };
    ok(%rh, 'the job is written again');
    is($rec->[1][0][0] // '', '1-0', '  from its first event');
    is(length($rec->[2] // ''), $rh{textlen} // -1, '  its text');
    unlike($rec->[2] // '', qr/\0/, '  (not a part of it)');
    is(length($rec->[3] // ''), $rh{metalen} // -1, '  its meta');
    ok(($rh{sv} // 0) > 0 && defined $rec->[4],
       '  its state (sv ' . ($rh{sv} // '') . ')');

    @all = frames(stream_rest($st), 1);
    is($all[-1]{event}, 'complete', 'the pipeline went on to its end');
    is_deeply([map { decode_json($_->{data})->{step} }
                   grep { $_->{event} eq 'step' } @all],
              [qw(outline draft review)], '  through every step');

    ok(wait_for(sub { ($hash->($job)->{state} // '') eq 'completed' }, 5),
       'the job is completed in the new Redis');

    my $jh = $hash->($job);
    is($jh->{nevents}, scalar @all, '  with every event');
    is($rcli->('XLEN', "t081:{$job}:events"), scalar @all,
       '  a stream entry each');
    like($rcli->('XRANGE', "t081:{$job}:events", '-', '+', 'COUNT', 1),
         qr/^1-0\n/, '  from the first');
    is($rcli->('GET', "t081:{$job}:text"), decode_json($all[-1]{data})->{text},
       '  all its text');

    my $ps = eval { decode_json($rcli->('GET', "t081:{$job}:pstate")) } || {};
    is_deeply([map { $_->{state} } @{ $ps->{steps} || [] }],
              [qw(done done done)], '  its last state');

    like(error_log($ra), qr/lost job \Q$job\E, writing it again/,
         'A logged the rewrite');

    # everything, from the start, on the other instance

    $t = stream_open($pb, '/k', 'Last-Event-ID' => $job);
    @rest = frames(stream_rest($t), 1);
    is(same_events(\@rest, \@all), '',
       'B resumes the job from its start: the whole stream');

    $j = eval { decode_json((http_get($pb, 'GET', "/jobs/$job",
                   headers => { Accept => 'application/json' }))[2]) } || {};

    is($j->{pipeline}, 'pk', 'B: the job as JSON, with its pipeline');
    is_deeply([map { [$_->{name}, $_->{state}, $_->{attempts}] }
                   @{ $j->{steps} || [] }],
              [['outline', 'done', 1], ['draft', 'done', 1],
               ['review', 'done', 1]],
              '  and its steps');
    is_deeply([map { $_->{output} } @{ $j->{steps} || [] }],
              [decode_json($outline), decode_json($all[-1]{data})->{text},
               decode_json($review)],
              '  their outputs');

    stop_nginx($ra);
    stop_nginx($rb);
    $redis_stop->();

    for my $root ($ra, $rb) {
        unlike(error_log($root), qr/\[(alert|crit|emerg)\]/,
               "$root: no alerts");
    }
}

done_testing();
