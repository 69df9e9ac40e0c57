//! HTTP/2 conformance: builds h2spec from its Go module and runs it against the https listener.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("h2spec: not wired yet")
}
