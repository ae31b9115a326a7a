//! The crash loops of `engine_crash`: one engine killed and restarted (both backends), the
//! nats-server or a cluster node killed under one engine, and one of three engines on one
//! stream killed at random (issue 25 item 6), with the checks on what was written.

use super::*;
use gateways::common::backend::BackendArgs;

async fn crash_loop(backend: Backend) {
    crash_loop_killing(backend, Victim::Engine).await;
}

async fn crash_loop_killing(backend: Backend, victim: Victim) {
    let started = Instant::now();
    let name = match (backend, victim) {
        (Backend::Embedded, _) => "embedded",
        (Backend::JetStream, Victim::Engine) => "jetstream",
        (Backend::JetStream, Victim::Nats) => "jetstream, nats-server killed",
        (Backend::JetStream, Victim::ClusterNode) => "jetstream R3, a cluster node killed",
        (Backend::JetStream, Victim::OneOfEngines) => "jetstream R3, one of three engines killed",
    };
    let (seed, rounds) = (seed(), rounds());
    eprintln!("engine_crash[{name}]: seed {seed} (VOUCHSAFE_CRASH_SEED), {rounds} kill rounds (VOUCHSAFE_CRASH_ROUNDS, default {ROUNDS_DEFAULT})");
    let mut schedule = Rng(seed);
    let mut nats = match (backend, victim) {
        (Backend::Embedded, _) | (Backend::JetStream, Victim::ClusterNode | Victim::OneOfEngines) => None,
        (Backend::JetStream, _) => Some(replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"))),
    };
    let mut cluster =
        matches!(victim, Victim::ClusterNode | Victim::OneOfEngines).then(|| replay_tests::NatsCluster::start(3).unwrap_or_else(|error| panic!("{error}")));
    let nats_url = nats.as_ref().map(|server| server.url()).or_else(|| cluster.as_ref().map(|cluster| cluster.url()));
    let replicas = if cluster.is_some() { 3 } else { 1 };
    let run_dir = RunDir::new();
    let engine_count = if victim == Victim::OneOfEngines { ENGINES } else { 1 };
    let ports = (0..engine_count).map(|_| free_port()).collect();
    let mut launch = Launch { binary: vouchsafe_binary(), root: run_dir.path.clone(), ports, nats_url, replicas, started: 0 };
    gateways::common::keys::init(&launch.keys()).expect("keys init");
    let url = launch.url();
    let urls: Vec<String> = (0..engine_count).map(|engine| launch.url_of(engine)).collect();
    let mut engines = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let mut engine = launch.spawn_engine(index);
        wait_healthy(url, &mut engine).await;
        engines.push(engine);
    }

    let market = set_up_market(&url, &launch.keys()).await;
    let mut nodes = Vec::new();
    for (index, credential) in market.nodes.iter().enumerate() {
        // Node i talks to engine i (of those there are): the others hear of it by gossip.
        nodes.push(start_node(&urls[index % urls.len()], credential, &run_dir.path.join(format!("node-{index}"))).await);
    }
    let setup = started.elapsed();

    let load = Arc::new(Load {
        urls: urls.clone(),
        media: market.media.clone(),
        passports: market.passports.clone(),
        out_dir: run_dir.path.join("copies"),
        ledger: Mutex::new(Vec::new()),
        acks: AtomicU64::new(0),
        endpoints: AtomicU64::new(0),
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        steps: (0..WORKERS).map(|_| AtomicU8::new(0)).collect(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for (index, merchant) in market.merchants.iter().enumerate() {
        workers.spawn(worker(Arc::clone(&load), index, merchant.clone(), seed ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)));
    }

    let mut in_flight_at_kills: BTreeMap<Step, u64> = BTreeMap::new();
    let mut restarts = Vec::new();
    let mut nodes_back_after = Vec::new();
    let load_started = Instant::now();
    for round in 1..=rounds {
        // The load has resumed (something acknowledged since the restart), then a random wait.
        let acks_before = load.acks.load(Ordering::Relaxed);
        let resume_deadline = Instant::now() + Duration::from_millis(LOAD_RESUME_DEADLINE_MS);
        while load.acks.load(Ordering::Relaxed) == acks_before {
            assert!(Instant::now() < resume_deadline, "round {round}: nothing acknowledged for {LOAD_RESUME_DEADLINE_MS} ms after the restart");
            if let Some(joined) = workers.try_join_next() {
                joined.expect("a worker failed");
                panic!("a worker stopped before the end");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let live_ms = schedule.between(KILL_AFTER_MS_MIN, KILL_AFTER_MS_MAX);
        tokio::time::sleep(Duration::from_millis(live_ms)).await;
        if let Some(joined) = workers.try_join_next() {
            joined.expect("a worker failed");
            panic!("a worker stopped before the end");
        }
        let steps: Vec<Step> = load.steps.iter().map(|step| Step::from_u8(step.load(Ordering::Relaxed))).collect();
        let acks_at_kill = load.acks.load(Ordering::Relaxed);
        let killed_at;
        let pid = match victim {
            Victim::Engine => {
                let pid = engines[0].pid();
                engines[0].kill_9();
                killed_at = Instant::now();
                engines[0] = launch.spawn();
                wait_healthy(&url, &mut engines[0]).await;
                pid
            }
            // Once (the third round) a cluster node under the engines; else one engine.
            Victim::OneOfEngines if round == CLUSTER_KILL_ROUND => {
                let cluster = cluster.as_mut().expect("the cluster exists");
                let index = schedule.between(0, cluster.len() as u64 - 1) as usize;
                let pid = cluster.pid(index);
                killed_at = Instant::now();
                cluster.restart(index).unwrap_or_else(|error| panic!("restarting cluster node {index}: {error}"));
                pid
            }
            Victim::OneOfEngines => {
                let index = schedule.between(0, engine_count as u64 - 1) as usize;
                let pid = engines[index].pid();
                engines[index].kill_9();
                killed_at = Instant::now();
                engines[index] = launch.spawn_engine(index);
                wait_healthy(&urls[index], &mut engines[index]).await;
                pid
            }
            Victim::Nats => {
                let server = nats.as_mut().expect("the nats-server victim exists on JetStream");
                let pid = server.pid();
                killed_at = Instant::now();
                server.restart().unwrap_or_else(|error| panic!("restarting nats-server: {error}"));
                pid
            }
            Victim::ClusterNode => {
                let cluster = cluster.as_mut().expect("the cluster exists");
                let index = (round as usize) % cluster.len();
                let pid = cluster.pid(index);
                killed_at = Instant::now();
                cluster.restart(index).unwrap_or_else(|error| panic!("restarting cluster node {index}: {error}"));
                pid
            }
        };
        for step in &steps {
            *in_flight_at_kills.entry(*step).or_default() += 1;
        }
        let restart = killed_at.elapsed();
        restarts.push(restart);
        // The node agents outlive the engine: they announce themselves to the new process
        // when their next heartbeat is refused, and only then may the engine allocate again.
        let endpoints_before = load.endpoints.load(Ordering::Relaxed);
        let nodes_deadline = Instant::now() + Duration::from_millis(NODES_BACK_DEADLINE_MS);
        while load.endpoints.load(Ordering::Relaxed) == endpoints_before {
            assert!(
                Instant::now() < nodes_deadline,
                "round {round}: no IssueVoucher named a node's endpoint within {NODES_BACK_DEADLINE_MS} ms of the restart: the node agents did not announce themselves again"
            );
            if let Some(joined) = workers.try_join_next() {
                joined.expect("a worker failed");
                panic!("a worker stopped before the end");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let nodes_back = killed_at.elapsed();
        nodes_back_after.push(nodes_back);
        eprintln!(
            "engine_crash[{name}]: round {round}/{rounds}: kill -9 {pid} after {live_ms} ms at t={:.1} s with {acks_at_kill} acknowledged, workers in {steps:?}; serving again after {} ms, a node allocated again after {} ms",
            load_started.elapsed().as_secs_f64(),
            restart.as_millis(),
            nodes_back.as_millis()
        );
    }

    // The workers finish the purchase they are in; then the engine's live view, a graceful
    // stop, and the checks on what was written.
    load.stop.store(true, Ordering::Relaxed);
    let drain_deadline = tokio::time::Instant::now() + Duration::from_millis(DRAIN_DEADLINE_MS);
    let mut purchases = 0;
    while let Some(joined) = tokio::time::timeout_at(drain_deadline, workers.join_next()).await.expect("the workers finish their last purchase") {
        purchases += joined.expect("a worker failed");
    }
    let load_time = load_started.elapsed();
    if let Some(cluster) = &cluster {
        settled_cluster(&cluster.url()).await;
    }
    // Every engine's live projections, once it has applied the whole stream.
    let mut lives = Vec::new();
    for url in &urls {
        lives.push(live_totals(url, &market.operator).await);
    }
    let live = lives[0].clone();
    for node in nodes {
        node.shutdown().await;
    }
    for (index, engine) in engines.iter_mut().enumerate() {
        let exit = engine.terminate();
        assert!(exit.success(), "after {rounds} kills engine {index} still stops gracefully with exit code 0: {exit:?}");
    }

    // The sealer is whichever engine held the job lease: pin to a seal one of them wrote.
    let pin = (0..engine_count).find_map(|engine| {
        let witness = launch.data_dir_of(engine).join(gateways::audit::WITNESS_FILE);
        witness.is_file().then(|| gateways::audit::pin_from_witness(&witness).expect("the witness file names a seal"))
    });
    // A cluster whose node was just restarted may still be electing the streams' leaders:
    // opening (stream info on both streams) is retried for a while.
    let backend = BackendArgs { data_dir: launch.data_dir(), nats_url: launch.nats_url.clone(), stream: engine::log::jetstream::DEFAULT_STREAM.to_string() };
    let open_deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        match backend.open().await {
            Ok(log) => break log,
            Err(error) if Instant::now() < open_deadline => {
                eprintln!("engine_crash[{name}]: opening the log for the checks: {error:#}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("open the log: {error:#}"),
        }
    };
    if let Some(cluster) = &cluster {
        settled_cluster(&cluster.url()).await;
    }
    let ledger = load.ledger.lock().expect("ledger lock").clone();
    let figures = check_stream(log.as_ref(), &ledger, &launch.keys(), pin, &live, &launch.data_dir().join("projections")).await;
    for (index, other) in lives.iter().enumerate().skip(1) {
        assert_eq!(other, &live, "engine {index}'s live royalty totals equal engine 0's, which equal a clean rebuild's");
    }
    let most = replay_tests::most_slots_in_use(log.as_ref()).await;
    assert!(most <= NODE_SLOTS_MAX, "{most} slots of one node in use at one sequence, of {NODE_SLOTS_MAX} licensed");

    // How often an engine's follower found the stream had gone back (a server that lost a
    // tail it had delivered) and its live projections rebuilt: read from the engines' logs.
    let rebuilds: usize = (1..=launch.started)
        .map(|n| std::fs::read_to_string(run_dir.path.join(format!("engine-{n}.log"))).unwrap_or_default().matches("rebuilding them from sequence 1").count())
        .sum();
    let retries: Vec<String> = STEPS[1..].iter().map(|step| format!("{step:?} {}", load.stats.retries[*step as usize].load(Ordering::Relaxed))).collect();
    let restart_ms: Vec<u128> = restarts.iter().map(Duration::as_millis).collect();
    let nodes_back_ms: Vec<u128> = nodes_back_after.iter().map(Duration::as_millis).collect();
    eprintln!(
        "engine_crash[{name}]: {rounds} kills survived; {} acknowledged commands checked ({purchases} purchases, {} media deliveries) over {} events and {} vouchers; \
         retries with the same request id: {} ({}), {} steps recovered by a retry, {} deliberate repeats returned the first answer; errors seen {:?}; \
         workers in flight at the kills {in_flight_at_kills:?}; restarts (kill to serving) {restart_ms:?} ms, kill to a node allocated again {nodes_back_ms:?} ms; {} seals verified over {} royalty entries, pinned {}; \
         live projections rebuilt after the stream went back under them: {rebuilds}; setup {:.1} s, load {:.1} s, total {:.1} s",
        ledger.len(),
        figures.delivered_media,
        figures.events,
        figures.vouchers,
        STEPS[1..].iter().map(|step| load.stats.retries[*step as usize].load(Ordering::Relaxed)).sum::<u64>(),
        retries.join(", "),
        load.stats.recovered.load(Ordering::Relaxed),
        load.stats.repeats.load(Ordering::Relaxed),
        load.stats.errors.lock().expect("errors lock"),
        figures.seals,
        figures.royalty_entries,
        pin.is_some(),
        setup.as_secs_f64(),
        load_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(nats);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_the_engine_under_load_on_the_embedded_log() {
    crash_loop(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_the_engine_under_load_on_jetstream() {
    crash_loop(Backend::JetStream).await;
}

/// Issue 8 item 2: kill -9 the nats-server (single node, `sync_interval: always`) under
/// the engine's load, again and again; the same invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_the_nats_server_under_load() {
    crash_loop_killing(Backend::JetStream, Victim::Nats).await;
}

/// Issue 25 item 6: three engines on one stream of a 3-node cluster (replicas 3), workers
/// and nodes spread over them; kill -9 one engine at random each round (a cluster node once),
/// restarted on its port and data. The same invariants hold, and no node ever had more slots
/// in use than licensed at any sequence of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_one_of_three_engines_on_one_stream_under_load() {
    crash_loop_killing(Backend::JetStream, Victim::OneOfEngines).await;
}

/// Issue 8 item 2: kill -9 one node of a 3-node cluster (replicas 3) under the engine's
/// load, round after round; the same invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_a_cluster_node_under_load() {
    crash_loop_killing(Backend::JetStream, Victim::ClusterNode).await;
}

/// Engines on one stream in the `OneOfEngines` run.
const ENGINES: usize = 3;
/// The round of the `OneOfEngines` run that kills a cluster node instead of an engine.
const CLUSTER_KILL_ROUND: u32 = 3;
