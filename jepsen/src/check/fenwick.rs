//! A Fenwick (binary indexed) tree of marks, shared by the window
//! checkers: mark a position, count marks below one, find the k-th.

/// Counts of marked positions, by prefix.
pub(crate) struct Fenwick {
    tree: Vec<u32>,
}

impl Fenwick {
    pub(crate) fn new(len: usize) -> Fenwick {
        Fenwick {
            tree: vec![0; len + 1],
        }
    }

    pub(crate) fn add(&mut self, pos: usize) {
        let mut i = pos + 1;
        while i < self.tree.len() {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Marks in positions `0..end`.
    pub(crate) fn count_below(&self, end: usize) -> u32 {
        let (mut i, mut sum) = (end, 0);
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The position of the `k`-th mark (1-based), in position order.
    pub(crate) fn position_of(&self, k: u32) -> usize {
        let (mut pos, mut left) = (0, k);
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] < left {
                pos = next;
                left -= self.tree[next];
            }
            step /= 2;
        }
        pos
    }
}
