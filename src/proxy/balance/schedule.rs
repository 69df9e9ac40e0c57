//! The weighted schedule round robin walks and the random draws sample.

/// Nginx's smooth weighted round robin, unrolled into a schedule: weights 5,1,1 give
/// `a a b a c a a` rather than `a a a a a b c`. Weights are reduced by their gcd and the
/// schedule is capped so that huge weights cannot make it huge.
pub fn smooth(mut weights: Vec<u32>) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    for w in &mut weights {
        *w /= g;
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total > 1024 {
        let scale = total as f64 / 1024.0;
        for w in &mut weights {
            *w = ((f64::from(*w) / scale).round() as u32).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += i64::from(*w);
        }
        let (best, _) =
            current.iter().enumerate().max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i))).expect("non-empty");
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_smooth_and_proportional() {
        assert_eq!(smooth(vec![5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth(vec![2, 4]), vec![1, 0, 1]);
        let big = smooth(vec![1_000_000, 1]);
        assert!(big.len() <= 1025 && big.contains(&1));
        assert!(smooth(vec![]).is_empty());
    }
}
