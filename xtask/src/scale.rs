//! `cargo xtask bench controller`: the controller scale benchmark (e2e/benches/scale.rs)
//! against the real e2e control plane, with the release binary.
//!
//! It needs the cluster for the same reason the e2e tests do: the measurement is only honest
//! against a real kube-apiserver (list, watch, patch latency and all), so it starts etcd and
//! kube-apiserver in a private network namespace and runs the benchmark inside it.

use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::{e2e, util};

/// Builds everything, starts the cluster, runs the benchmark; results land in bench/results.
/// `--objects N`: how many Ingresses (each with a Service and an EndpointSlice); 10,000 by
/// default.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let objects = match args {
        [] => 10_000,
        [flag, n] if flag == "--objects" => {
            n.parse::<usize>().with_context(|| format!("--objects {n}: not a count"))?
        }
        _ => bail!("usage: cargo xtask bench controller [--objects N]"),
    };
    let binary = util::release_binary()?;
    util::step(
        "build the controller scale benchmark",
        &["cargo", "bench", "--package", "portcullis-e2e", "--bench", "scale", "--no-run"],
    )?;
    let bins = e2e::build()?;
    let started = Instant::now();
    let cluster = e2e::Cluster::start(&bins)?;
    e2e::apply_crds(&cluster)?;
    eprintln!("==> cluster ready with CRDs in {:.1?}", started.elapsed());
    let status = cluster
        .netns_command(&["cargo", "bench", "--package", "portcullis-e2e", "--bench", "scale"])
        .env("PORTCULLIS_E2E_KUBECONFIG", &cluster.kubeconfig)
        .env("PORTCULLIS_BIN", &binary)
        .env("PORTCULLIS_SCALE_OBJECTS", objects.to_string())
        .env("PORTCULLIS_BENCH_OUT", util::root().join("bench/results"))
        .env("CARGO_NET_OFFLINE", "true")
        .current_dir(util::root())
        .status()
        .context("running the controller scale benchmark")?;
    if !status.success() {
        cluster.print_log_tails();
        let log = std::env::temp_dir().join("portcullis-scale-controller.log");
        eprintln!("--- controller log: {}", log.display());
        bail!("controller scale benchmark failed ({status})");
    }
    Ok(())
}
