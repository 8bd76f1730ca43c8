//! Unlabelled embeddings grouped into candidate classes: greedy community detection as in
//! sentence-transformers' `util.community_detection`. Every text's neighbours are the texts at
//! cosine similarity `>= similarity` (itself included); the text with the most neighbours founds
//! a group of those of its neighbours not yet in one, if at least `min_size` are left; then the
//! next densest, and so on. Texts in no group stay ungrouped.
//!
//! Invariants: deterministic (ties go to the lower index); every group has at least `min_size`
//! members, its founder (the centre) first and the rest by falling similarity to it; no text is
//! in two groups. Cost: n² · dim multiply-adds (one matrix product per block of rows), and the
//! neighbour lists.

use super::linalg::gemm;

/// One candidate class: indices into the rows given to `communities`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The founder: the member with the most neighbours.
    pub centre: usize,
    /// Centre first, then by falling similarity to the centre.
    pub members: Vec<usize>,
    /// Each member's cosine similarity to the centre (same order).
    pub similarities: Vec<f32>,
}

impl Group {
    /// Mean similarity of the members to the centre (1 for identical texts).
    pub fn cohesion(&self) -> f32 {
        self.similarities.iter().sum::<f32>() / self.similarities.len().max(1) as f32
    }
}

/// Rows per matrix product while finding neighbours (bounds the scratch to `BLOCK` x n floats).
const BLOCK: usize = 256;

/// Group the `x.len() / dim` row-major embeddings (any norm; a zero row has no neighbours but
/// itself). Groups come densest first.
pub fn communities(x: &[f32], dim: usize, similarity: f32, min_size: usize) -> Vec<Group> {
    let n = x.len().checked_div(dim).unwrap_or(0);
    let mut unit = x[..n * dim].to_vec();
    for row in unit.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    // Neighbours of each row: (index, similarity), itself included.
    let mut neighbours: Vec<Vec<(usize, f32)>> = Vec::with_capacity(n);
    let mut sims = vec![0f32; BLOCK.min(n.max(1)) * n];
    for start in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - start);
        let block = &unit[start * dim..(start + rows) * dim];
        gemm(rows, dim, n, (block, dim, 1), (&unit, 1, dim), &mut sims[..rows * n]);
        for (r, line) in sims[..rows * n].chunks(n).enumerate() {
            let mut mine: Vec<(usize, f32)> = line
                .iter()
                .enumerate()
                .filter(|(j, s)| **s >= similarity || *j == start + r)
                .map(|(j, s)| (j, *s))
                .collect();
            if let Some(me) = mine.iter_mut().find(|(j, _)| *j == start + r) {
                me.1 = 1.0;
            }
            neighbours.push(mine);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(neighbours[i].len()), i));
    let mut taken = vec![false; n];
    let mut groups = Vec::new();
    for c in order {
        if neighbours[c].len() < min_size.max(1) {
            break;
        }
        if taken[c] {
            continue;
        }
        let mut free: Vec<(usize, f32)> = neighbours[c].iter().copied().filter(|(j, _)| !taken[*j]).collect();
        if free.len() < min_size.max(1) {
            continue;
        }
        free.sort_by(|a, b| (a.0 != c).cmp(&(b.0 != c)).then(b.1.total_cmp(&a.1)).then(a.0.cmp(&b.0)));
        for (j, _) in &free {
            taken[*j] = true;
        }
        groups.push(Group {
            centre: c,
            members: free.iter().map(|m| m.0).collect(),
            similarities: free.iter().map(|m| m.1).collect(),
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows near two directions plus scattered ones: two groups, the denser first, the strays
    /// left out; the same answer again (deterministic).
    #[test]
    fn dense_directions_become_groups_and_strays_stay_out() {
        let dim = 8;
        let mut x = Vec::new();
        let unit = |k: usize, wobble: f32, j: usize| -> Vec<f32> {
            (0..dim)
                .map(|d| {
                    if d == k {
                        1.0
                    } else if d == (k + 1 + j % 3) % dim {
                        wobble
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        for j in 0..7 {
            x.extend(unit(0, 0.1 * j as f32 / 7.0, j)); // rows 0..7: 7 near e0
        }
        for j in 0..5 {
            x.extend(unit(4, 0.2, j)); // rows 7..12: 5 near e4
        }
        for k in [2usize, 6] {
            x.extend(unit(k, 0.0, 0)); // two strays
        }
        let g = communities(&x, dim, 0.9, 5);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(g[0].members.len(), 7);
        assert!(g[0].members.iter().all(|&m| m < 7));
        assert_eq!(g[0].members[0], g[0].centre);
        assert!(g[0].similarities.windows(2).all(|w| w[0] >= w[1]), "by falling similarity");
        let mut second = g[1].members.clone();
        second.sort();
        assert_eq!(second, (7..12).collect::<Vec<_>>());
        assert!(g[1].cohesion() > 0.9 && g[1].cohesion() <= 1.0);
        assert_eq!(communities(&x, dim, 0.9, 5), g);
        assert!(communities(&x, dim, 0.9, 8).is_empty(), "no group smaller than min_size");
    }

    /// Against a direct pairwise computation: every member is within the similarity of its centre,
    /// and a block boundary (more rows than BLOCK) changes nothing.
    #[test]
    fn members_are_neighbours_of_their_centre_across_blocks() {
        let dim = 4;
        let mut x = Vec::new();
        let mut s = 7u64;
        for _ in 0..(BLOCK + 40) {
            for _ in 0..dim {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                x.push(((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5);
            }
        }
        let g = communities(&x, dim, 0.95, 3);
        assert!(!g.is_empty());
        let cos = |a: usize, b: usize| {
            let (u, v) = (&x[a * dim..(a + 1) * dim], &x[b * dim..(b + 1) * dim]);
            let dot: f32 = u.iter().zip(v).map(|(p, q)| p * q).sum();
            dot / (u.iter().map(|p| p * p).sum::<f32>().sqrt() * v.iter().map(|q| q * q).sum::<f32>().sqrt())
        };
        let mut seen = std::collections::HashSet::new();
        for grp in &g {
            for (&m, &sim) in grp.members.iter().zip(&grp.similarities).skip(1) {
                assert!((cos(grp.centre, m) - sim).abs() < 1e-5 && sim >= 0.95);
                assert!(seen.insert(m), "{m} in two groups");
            }
        }
    }
}
