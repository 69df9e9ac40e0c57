//! TEMPORARY until lb-hash lands.
pub struct Ring(Vec<(u64, u32)>);
impl Ring {
    pub fn new(endpoints: &[(&str, u32)], min: u64, _max: u64) -> Ring {
        let per = (min / endpoints.len().max(1) as u64).max(1);
        let mut v = Vec::new();
        for (i, (k, w)) in endpoints.iter().enumerate() {
            for j in 0..per * u64::from(*w) {
                v.push((super::hash::hash_seeded(k.as_bytes(), j), i as u32));
            }
        }
        v.sort_unstable();
        Ring(v)
    }
    pub fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.0.len();
        let start = self.0.partition_point(|e| e.0 < hash);
        (0..n).map(|i| self.0[(start + i) % n].1 as usize).find(|&e| usable(e))
    }
}
