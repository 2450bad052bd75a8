//! What a load generator issues: the access pattern, the read/write mix and
//! the stream of (direction, offset) operations of one queue.

use serde::{Deserialize, Serialize};

/// An access pattern, named as fio names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random reads and writes, mixed by the read percentage.
    Randrw,
}

impl Workload {
    /// The fio name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Randread => "randread",
            Workload::Randwrite => "randwrite",
            Workload::Randrw => "randrw",
        }
    }

    /// Whether offsets are random.
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::Randread | Workload::Randwrite | Workload::Randrw
        )
    }

    /// The share of reads in percent, given the mix asked for randrw.
    pub fn read_percent(self, mix: u8) -> u8 {
        match self {
            Workload::Read | Workload::Randread => 100,
            Workload::Write | Workload::Randwrite => 0,
            Workload::Randrw => mix.min(100),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The direction of one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Controller to host.
    Read,
    /// Host to controller.
    Write,
}

/// A small, fast pseudo-random generator (xorshift64*), seeded for
/// repeatable runs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0), without the bias of a modulo.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The operations of one queue over its share of the region, in units of
/// the I/O size: unit `u` covers bytes `u * io_size .. (u + 1) * io_size`.
#[derive(Clone, Debug)]
pub struct OpStream {
    random: bool,
    read_percent: u8,
    first: u64,
    units: u64,
    cursor: u64,
    rng: Rng,
}

impl OpStream {
    /// Operations over units `first .. first + units` (`units` > 0).
    pub fn new(workload: Workload, mix: u8, first: u64, units: u64, seed: u64) -> OpStream {
        OpStream {
            random: workload.is_random(),
            read_percent: workload.read_percent(mix),
            first,
            units: units.max(1),
            cursor: 0,
            rng: Rng::new(seed),
        }
    }

    /// The next operation: its direction and unit.
    pub fn next_op(&mut self) -> (Direction, u64) {
        let dir = match self.read_percent {
            100 => Direction::Read,
            0 => Direction::Write,
            p if self.rng.below(100) < p as u64 => Direction::Read,
            _ => Direction::Write,
        };
        let unit = if self.random {
            self.rng.below(self.units)
        } else {
            let u = self.cursor;
            self.cursor = (self.cursor + 1) % self.units;
            u
        };
        (dir, self.first + unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_wraps_within_its_share() {
        let mut s = OpStream::new(Workload::Read, 0, 10, 3, 1);
        let units: Vec<u64> = (0..7).map(|_| s.next_op().1).collect();
        assert_eq!(units, [10, 11, 12, 10, 11, 12, 10]);
        assert_eq!(s.next_op().0, Direction::Read);
    }

    #[test]
    fn random_stays_in_range_and_covers_it() {
        let mut s = OpStream::new(Workload::Randwrite, 0, 100, 50, 7);
        let mut seen = [false; 50];
        for _ in 0..5000 {
            let (dir, u) = s.next_op();
            assert_eq!(dir, Direction::Write);
            assert!((100..150).contains(&u), "{u}");
            seen[(u - 100) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every unit is reached");
    }

    #[test]
    fn mix_follows_the_read_percentage() {
        let mut s = OpStream::new(Workload::Randrw, 70, 0, 1000, 3);
        let reads = (0..10_000)
            .filter(|_| s.next_op().0 == Direction::Read)
            .count();
        assert!((6700..7300).contains(&reads), "{reads} reads of 10000");
        assert_eq!(Workload::Randread.read_percent(10), 100);
        assert_eq!(Workload::Write.read_percent(90), 0);
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = OpStream::new(Workload::Randrw, 50, 0, 1 << 20, 42);
        let mut b = OpStream::new(Workload::Randrw, 50, 0, 1 << 20, 42);
        for _ in 0..100 {
            assert_eq!(a.next_op(), b.next_op());
        }
    }
}
