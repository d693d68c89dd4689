//! Realistic `UserEvent`s: registrations (with e-mail and username), logins and logouts of
//! a fixed population of users, with ip, user agent and region as metadata.
//!
//! The generator fills one reused event in place (its strings and metadata entries keep
//! their buffers), so producing an event allocates nothing in steady state. A seed makes
//! the sequence reproducible, apart from the timestamps, which are the wall clock's.

use crate::proto::{EventType, UserEvent, UserEventData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
];
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "example.net"];

/// Produces [`UserEvent`]s into a reused event.
pub struct EventGenerator {
    rng: StdRng,
    users: u64,
}

impl EventGenerator {
    /// Events of `users` distinct users (at least 1); `seed` 0 picks a random seed.
    pub fn new(seed: u64, users: u64) -> Self {
        let rng = if seed == 0 {
            StdRng::from_os_rng()
        } else {
            StdRng::seed_from_u64(seed)
        };
        Self {
            rng,
            users: users.max(1),
        }
    }

    /// A fresh event with every field present, for [`fill`](Self::fill) to reuse.
    pub fn empty_event() -> UserEvent {
        UserEvent {
            data: Some(UserEventData::default()),
            ..UserEvent::default()
        }
    }

    /// Overwrites `event` with the next event: 10% registrations, 60% logins, 30% logouts.
    pub fn fill(&mut self, event: &mut UserEvent) {
        let rng = &mut self.rng;
        event.event_id.clear();
        let (high, low): (u64, u64) = (rng.random(), rng.random());
        // A version-4 UUID.
        let _ = write!(
            event.event_id,
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0x0fff,
            (low >> 48) & 0x3fff | 0x8000,
            low & 0xffff_ffff_ffff
        );
        event.timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let user = rng.random_range(0..self.users);
        event.user_id.clear();
        let _ = write!(event.user_id, "user-{user:08}");
        let kind = match rng.random_range(0..10) {
            0 => EventType::UserRegistered,
            1..=6 => EventType::UserLogin,
            _ => EventType::UserLogout,
        };
        event.event_type = kind as i32;
        let data = event.data.get_or_insert_with(UserEventData::default);
        if kind == EventType::UserRegistered {
            let username = data.username.get_or_insert_with(String::new);
            username.clear();
            let _ = write!(username, "user_{user}");
            let email = data.email.get_or_insert_with(String::new);
            email.clear();
            let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
            let _ = write!(email, "user_{user}@{domain}");
        } else {
            data.username = None;
            data.email = None;
        }
        let octets: [u8; 3] = [rng.random(), rng.random(), rng.random_range(1..=254)];
        if let Some(ip) = slot(&mut data.metadata, "ip") {
            let _ = write!(ip, "10.{}.{}.{}", octets[0], octets[1], octets[2]);
        }
        if let Some(agent) = slot(&mut data.metadata, "user_agent") {
            agent.push_str(USER_AGENTS[rng.random_range(0..USER_AGENTS.len())]);
        }
        if let Some(region) = slot(&mut data.metadata, "region") {
            region.push_str(REGIONS[rng.random_range(0..REGIONS.len())]);
        }
    }
}

/// The emptied value of metadata entry `key`, created on first use; later events reuse its
/// buffers. (Always `Some`.)
fn slot<'a>(
    map: &'a mut std::collections::BTreeMap<String, String>,
    key: &str,
) -> Option<&'a mut String> {
    if !map.contains_key(key) {
        map.insert(key.to_string(), String::new());
    }
    let value = map.get_mut(key)?;
    value.clear();
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_seed_repeats_the_sequence_and_events_are_well_formed() {
        let (mut a, mut b) = (EventGenerator::new(7, 50), EventGenerator::new(7, 50));
        let (mut x, mut y) = (EventGenerator::empty_event(), EventGenerator::empty_event());
        let mut kinds = [0; 4];
        for _ in 0..2_000 {
            a.fill(&mut x);
            b.fill(&mut y);
            y.timestamp = x.timestamp;
            assert_eq!(x, y);
            let data = x.data.as_ref().unwrap();
            let registered = x.event_type == EventType::UserRegistered as i32;
            assert_eq!(data.email.is_some(), registered);
            assert_eq!(data.username.is_some(), registered);
            assert_eq!(
                data.metadata.keys().collect::<Vec<_>>(),
                ["ip", "region", "user_agent"]
            );
            assert_eq!(x.event_id.len(), 36);
            assert!(x.user_id.starts_with("user-"));
            kinds[x.event_type as usize] += 1;
            let decoded = UserEvent::decode(x.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, x);
        }
        assert_eq!(kinds[0], 0, "no UNKNOWN events");
        assert!(kinds[1] > 100 && kinds[2] > kinds[3] && kinds[3] > kinds[1]);
    }
}
