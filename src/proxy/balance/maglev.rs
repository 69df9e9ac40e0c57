//! TEMPORARY until lb-hash lands.
pub struct Maglev(Vec<u32>);
impl Maglev {
    pub fn new(endpoints: &[(&str, u32)]) -> Maglev {
        Maglev((0..65537u32).map(|i| i % endpoints.len().max(1) as u32).collect())
    }
    pub fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.0.len();
        let start = (hash % n as u64) as usize;
        (0..n).map(|i| self.0[(start + i) % n] as usize).find(|&e| usable(e))
    }
}
