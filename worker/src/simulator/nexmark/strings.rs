//! Field values of the Nexmark records: names, cities and states from the
//! spec's lists, random strings, prices, padding (`extra`) and the channels
//! and URLs of bids (nexmark-flink's `StringsGenerator`, `PriceGenerator`
//! and the lists of `PersonGenerator` and `BidGenerator`).
//!
//! Invariants: every value is a pure function of the random stream it is
//! drawn from; the shared [`Tables`] (the padding text, the bid channels and
//! their URLs) are a pure function of the seed, built once per generator.
//! The spec builds those tables from unseeded randomness; here they follow
//! the seed, so runs repeat exactly.

use std::sync::Arc;

use super::super::rng::{self, SimRng};

/// Few states and cities, so that small runs still find matches.
pub const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
pub const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
pub const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
pub const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
/// Channels of half the bids (the spec's `HOT_CHANNELS`); the other half
/// come from `channel-0` … `channel-9999`.
pub const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// Cold channels: `channel-0` … `channel-{CHANNELS_NUMBER - 1}`.
pub const CHANNELS_NUMBER: usize = 10_000;
/// Shortest random string before trimming.
const MIN_STRING_LENGTH: u64 = 3;
/// Length of the text `extra` padding is cut from (the spec's 1 MiB).
const EXTRA_POOL_LEN: usize = 1 << 20;

/// Lowest price: 10^0 dollars in cents.
pub const MIN_PRICE: i64 = 100;
/// Highest price: 10^6 dollars in cents.
pub const MAX_PRICE: i64 = 100_000_000;

/// A random price in cents, log-uniform from [`MIN_PRICE`] to [`MAX_PRICE`]:
/// `round(10^(6u) · 100)` with `u` uniform in [0, 1), as the spec's
/// `Math.round(Math.pow(10.0, random.nextDouble() * 6.0) * 100.0)`. The power
/// is `exp(6u · ln 10)` in the simulator's platform-independent arithmetic.
pub fn next_price(rng: &mut SimRng) -> i64 {
    (rng::exp(rng.uniform() * 6.0 * std::f64::consts::LN_10) * 100.0).round() as i64
}

/// A random string of 3 to `max_len - 1` characters before trimming: lower
/// case letters, one in 13 `special` (leading and trailing spaces trimmed).
pub fn next_string(rng: &mut SimRng, max_len: u64, special: char) -> String {
    let len = MIN_STRING_LENGTH + rng.below(max_len - MIN_STRING_LENGTH);
    let mut s = String::with_capacity(len as usize);
    for _ in 0..len {
        if rng.below(13) == 0 {
            s.push(special);
        } else {
            s.push((b'a' + rng.below(26) as u8) as char);
        }
    }
    if special == ' ' {
        let trimmed = s.trim_matches(' ');
        if trimmed.len() != s.len() {
            return trimmed.to_string();
        }
    }
    s
}

/// `first last` from the spec's lists.
pub fn next_person_name(rng: &mut SimRng) -> String {
    let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
    let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
    format!("{first} {last}")
}

/// `<3..6 letters>@<3..4 letters>.com`, spaces trimmed.
pub fn next_email(rng: &mut SimRng) -> String {
    let user = next_string(rng, 7, ' ');
    let domain = next_string(rng, 5, ' ');
    format!("{user}@{domain}.com")
}

/// Four groups of four digits separated by spaces.
pub fn next_credit_card(rng: &mut SimRng) -> String {
    let mut g = || rng.below(10_000);
    format!("{:04} {:04} {:04} {:04}", g(), g(), g(), g())
}

pub fn next_us_city(rng: &mut SimRng) -> &'static str {
    US_CITIES[rng.below(US_CITIES.len() as u64) as usize]
}

pub fn next_us_state(rng: &mut SimRng) -> &'static str {
    US_STATES[rng.below(US_STATES.len() as u64) as usize]
}

/// `https://www.nexmark.com/<w>/<w>/<w>/item.htm?query=1`, each `w` 3 or 4
/// characters of letters and `_`.
fn base_url(rng: &mut SimRng) -> String {
    let mut url = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        url.push_str(&next_string(rng, 5, '_'));
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    url
}

/// What the records of one generator share: the padding text and the bid
/// channels with their URLs.
pub struct Tables {
    /// Random lower case letters; `extra` is a slice of it.
    extra_pool: String,
    hot: [(Arc<str>, Arc<str>); HOT_CHANNELS.len()],
    cold: Vec<(Arc<str>, Arc<str>)>,
}

impl Tables {
    /// The tables of a run: the pool from stream `pool_stream` of `key`, the
    /// channels from `channel_stream`.
    pub fn new(key: u64, pool_stream: u64, channel_stream: u64) -> Tables {
        let mut rng = SimRng::new(key, pool_stream);
        let mut extra_pool = String::with_capacity(EXTRA_POOL_LEN);
        while extra_pool.len() < EXTRA_POOL_LEN {
            // 13 letters per draw: 26^13 < 2^64, the bias is below 2^-60.
            let mut r = rng.next_u64();
            for _ in 0..13.min(EXTRA_POOL_LEN - extra_pool.len()) {
                extra_pool.push((b'a' + (r % 26) as u8) as char);
                r /= 26;
            }
        }
        let mut rng = SimRng::new(key, channel_stream);
        let hot = HOT_CHANNELS.map(|c| (Arc::from(c), Arc::from(base_url(&mut rng))));
        let cold = (0..CHANNELS_NUMBER)
            .map(|i| {
                let mut url = base_url(&mut rng);
                // Nine in ten cold channels tag their URL (the spec's
                // `Math.abs(Integer.reverse(i))`, Java's abs of i32::MIN included).
                if rng.below(10) > 0 {
                    let tag = (i as i32).reverse_bits().wrapping_abs();
                    url.push_str(&format!("&channel_id={tag}"));
                }
                (Arc::from(format!("channel-{i}")), Arc::from(url))
            })
            .collect();
        Tables {
            extra_pool,
            hot,
            cold,
        }
    }

    /// A bid's channel and URL: a hot channel for half the bids, else one of
    /// the [`CHANNELS_NUMBER`] cold ones. A channel always has the same URL.
    pub fn next_channel(&self, rng: &mut SimRng) -> (Arc<str>, Arc<str>) {
        let (c, u) = if rng.below(2) > 0 {
            &self.hot[rng.below(HOT_CHANNELS.len() as u64) as usize]
        } else {
            &self.cold[rng.below(CHANNELS_NUMBER as u64) as usize]
        };
        (c.clone(), u.clone())
    }

    /// Padding such that `current_size + extra.len()` is on average
    /// `avg_size`: uniform within ±20 % of `avg_size - current_size`
    /// (empty when the record is already that large).
    pub fn next_extra(&self, rng: &mut SimRng, current_size: usize, avg_size: usize) -> String {
        if current_size > avg_size {
            return String::new();
        }
        let want = avg_size - current_size;
        let delta = (want as f64 * 0.2).round() as usize;
        let size = want - delta
            + if delta == 0 {
                0
            } else {
                rng.below(2 * delta as u64) as usize
            };
        self.exact_string(rng, size)
    }

    /// `len` random lower case letters: a slice of the pool when shorter
    /// than half of it, else drawn letter by letter.
    fn exact_string(&self, rng: &mut SimRng, len: usize) -> String {
        let pool = &self.extra_pool;
        if len < pool.len() / 2 {
            let start = rng.below((pool.len() - len) as u64) as usize;
            return pool[start..start + len].to_string();
        }
        (0..len)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect()
    }
}
