//! Per-user and per-address token buckets (governor): a purchase beyond them is answered
//! 429 with `Retry-After` (whole seconds, at least 1).

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

pub struct Limits {
    users: DefaultKeyedRateLimiter<u64>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
    Quota::per_second(per_sec).allow_burst(burst)
}

impl Limits {
    pub fn new(user_rate: u32, user_burst: u32, ip_rate: u32, ip_burst: u32) -> Self {
        Self {
            users: RateLimiter::keyed(quota(user_rate, user_burst)),
            addresses: RateLimiter::keyed(quota(ip_rate, ip_burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)`: the address is over its rate.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Duration> {
        self.addresses
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// `Err(wait)`: the user is over their rate.
    pub fn check_user(&self, user: u64) -> Result<(), Duration> {
        self.users
            .check_key(&user)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the buckets of keys not seen lately (the maps would grow with every user).
    pub fn forget_idle(&self) {
        self.users.retain_recent();
        self.addresses.retain_recent();
    }
}

/// `Retry-After`'s value for a wait.
pub fn retry_after(wait: Duration) -> String {
    wait.as_secs_f64().ceil().max(1.0).to_string()
}
