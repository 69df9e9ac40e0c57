//! Benchmarks: see bench/README.md.

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("bench: not wired yet")
}
