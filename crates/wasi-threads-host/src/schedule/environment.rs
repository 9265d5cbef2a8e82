//! What a scheduled program sees of the world that would otherwise differ
//! between runs: clocks that the [`Scheduler`] advances, and random bytes
//! from the schedule's seed.

use super::VIRTUAL_EPOCH_SECS;
use super::policy::SplitMix64;
use super::scheduler::{STEP_NS, Scheduler};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// The monotonic clock: virtual nanoseconds since the program began.
pub(crate) struct MonotonicClock(pub Arc<Scheduler>);

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        STEP_NS
    }

    fn now(&self) -> u64 {
        self.0.now_ns()
    }
}

/// The wall clock: [`VIRTUAL_EPOCH_SECS`] plus the monotonic clock.
pub(crate) struct WallClock(pub Arc<Scheduler>);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(STEP_NS)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(VIRTUAL_EPOCH_SECS) + Duration::from_nanos(self.0.now_ns())
    }
}

/// `random_get`'s bytes, from the seed. Not for cryptography: a scheduled
/// run is a test, and its randomness must repeat.
pub(crate) struct SeededRandom(SplitMix64);

impl SeededRandom {
    pub fn new(seed: u64, salt: u64) -> Self {
        SeededRandom(SplitMix64::new(seed).fork(salt))
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.0.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// Gives `builder` the virtual clocks of `scheduler` and generators seeded
/// from its seed: whatever else the embedder set, these win, or the run
/// would not repeat.
pub(crate) fn virtualize(builder: &mut wasmtime_wasi::WasiCtxBuilder, scheduler: &Arc<Scheduler>) {
    let seed = scheduler.seed();
    builder
        .wall_clock(WallClock(scheduler.clone()))
        .monotonic_clock(MonotonicClock(scheduler.clone()))
        .secure_random(SeededRandom::new(seed, 1))
        .insecure_random(SeededRandom::new(seed, 2))
        .insecure_random_seed(u128::from(SplitMix64::new(seed).fork(3).next_u64()));
}
