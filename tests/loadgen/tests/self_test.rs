//! The load generator tested against an in-process gateway and three
//! nodes: a short run of every workload must finish with zero errors, the
//! traffic it reports must really have flowed, and fan-out must count no
//! loss and no duplicates. Runs are a second or two each, so CI stays fast.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use stickyio_gateway::{Gateway, RunningGateway};
use stickyio_loadgen::report::Report;
use stickyio_loadgen::session::{Session, Target, Transport};
use stickyio_loadgen::source::Sources;
use stickyio_loadgen::workloads::{Run, churn, fanout, idle, roundtrip};
use stickyio_node::{Node, RunningNode};
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::config::node::NodeConfig;
use stickyio_testkit::eventually;

struct Setup {
    nodes: Vec<RunningNode>,
    gateway: RunningGateway,
}

impl Setup {
    async fn start() -> Setup {
        let mut nodes = Vec::new();
        let mut toml = String::from(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\n",
        );
        for name in ["node-a", "node-b", "node-c"] {
            let node = Node::bind(NodeConfig::standalone(name, "127.0.0.1:0".parse().unwrap()))
                .await
                .expect("node starts");
            toml.push_str(&format!(
                "\n[[nodes]]\nname = \"{name}\"\naddr = \"{}\"\n",
                node.local_addr()
            ));
            nodes.push(node);
        }
        let config: GatewayConfig =
            stickyio_shared::config::parse(&toml, "gateway.toml").expect("valid gateway config");
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let setup = Setup { nodes, gateway };
        setup.wait_ready().await;
        setup
    }

    /// Until a handshake through the gateway succeeds (health checks have
    /// marked the nodes up).
    async fn wait_ready(&self) {
        let target = Target {
            addr: self.gateway.local_addr(),
            path: "/socket.io/".into(),
            timeout: Duration::from_secs(2),
        };
        eventually("a handshake through the gateway succeeds", || async {
            match Session::open(&target, "127.0.0.1".parse().unwrap(), Transport::Polling).await {
                Ok(session) => {
                    let _ = session.close().await;
                    true
                }
                Err(_) => false,
            }
        })
        .await;
    }

    fn run(&self, targets: Vec<SocketAddr>, block: u8) -> Run {
        Run {
            targets,
            path: "/socket.io/".into(),
            timeout: Duration::from_secs(5),
            sources: Sources::new(block),
            label: "self-test".into(),
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            open_concurrency: 20,
            pids: vec![std::process::id()],
        }
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        for node in self.nodes {
            node.shutdown().await.expect("node stops");
        }
    }
}

fn assert_clean(report: &Report) {
    assert_eq!(
        report.errors.total, 0,
        "{} {} had errors: {:?}",
        report.workload, report.transport, report.errors
    );
    assert!(
        report.ops > 0,
        "{} {} did nothing",
        report.workload,
        report.transport
    );
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.p99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_clean_fanout_on_one_node_the_rest_through_the_gateway() {
    let setup = tokio::time::timeout(Duration::from_secs(15), Setup::start())
        .await
        .expect("setup within 15 s");
    let gateway = vec![setup.gateway.local_addr()];

    let body = async {
        for (i, transport) in [Transport::Polling, Transport::Websocket, Transport::Upgrade]
            .into_iter()
            .enumerate()
        {
            let report =
                roundtrip::run(&setup.run(gateway.clone(), 10 + i as u8), 8, transport).await;
            assert_clean(&report);
            assert_eq!(report.extra["sessions_opened"], 8);
        }

        let report = churn::run(&setup.run(gateway.clone(), 20), 4, Transport::Polling).await;
        assert_clean(&report);

        let mut run = setup.run(gateway.clone(), 30);
        run.duration = Duration::from_millis(300);
        let report = idle::run(&run, 20, 10).await;
        assert_eq!(report.errors.total, 0, "{:?}", report.errors);
        assert_eq!(report.extra["sessions_opened"], 30);
        assert_eq!(report.extra["sessions_alive_after_hold"], 30);
        assert!(report.extra["rss_held_kib"].as_u64().unwrap() > 0);

        // Standalone nodes do not relay, so fan-out runs on one node.
        let node = vec![setup.nodes[0].local_addr()];
        let shape = fanout::Shape {
            subscribers: 12,
            publishers: 2,
            window: 4,
            transport: Transport::Websocket,
        };
        let report = fanout::run(&setup.run(node, 40), shape).await;
        assert_clean(&report);
        assert_eq!(report.extra["loss"], 0);
        assert_eq!(report.extra["duplicates"], 0);
        let expected = report.extra["expected_deliveries"].as_u64().unwrap();
        assert!(expected > 0);
        assert_eq!(report.extra["received_deliveries"].as_u64(), Some(expected));
    };
    tokio::time::timeout(Duration::from_secs(30), body)
        .await
        .expect("workloads finish within 30 s");
    setup.stop().await;
}
