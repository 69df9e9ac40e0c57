//! The end-to-end control plane: etcd and kube-apiserver built from Go modules (e2e/cluster).

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("e2e-cluster: not wired yet")
}
