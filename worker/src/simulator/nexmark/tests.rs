//! What users of the Nexmark generator rely on: determinism, the event mix,
//! ids and references within the spec's bounds, hot keys, event times,
//! value ranges, record sizes and the table formats.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;

use arrow::datatypes::{DataType, TimeUnit};

use super::config::NexmarkConfig;
use super::ids::{self, last_base0_auction_id, last_base0_person_id};
use super::*;
use crate::codec::{AvroDecoder, AvroEncoder, OcfReader, OcfWriter};

fn config(seed: u64, events: u64) -> NexmarkConfig {
    NexmarkConfig {
        seed,
        events: Some(events),
        ..NexmarkConfig::default()
    }
}

fn events(config: NexmarkConfig) -> Vec<NexmarkEvent> {
    NexmarkGenerator::new(config).collect()
}

/// Generates the whole run in calls of the cycled `chunks` sizes.
fn run_split(config: NexmarkConfig, chunks: &[usize]) -> NexmarkOutput {
    let mut g = NexmarkGenerator::new(config);
    let mut out = NexmarkOutput::default();
    for &c in chunks.iter().cycle() {
        if g.remaining() == 0 {
            break;
        }
        out.append(g.next_batch(c));
    }
    assert!(g.next_batch(10).is_empty());
    out
}

#[test]
fn same_seed_gives_identical_output() {
    let a = run_split(config(7, 20_000), &[20_000]);
    let b = run_split(config(7, 20_000), &[20_000]);
    assert_eq!(a, b);
    assert_eq!(a.to_json_lines().unwrap(), b.to_json_lines().unwrap());
    let c = run_split(config(8, 20_000), &[20_000]);
    assert_ne!(a.bids, c.bids);
    assert_ne!(a.persons, c.persons);
    // Ids and times follow the event id, not the seed.
    let ids = |o: &NexmarkOutput| o.auctions.iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&c));
}

#[test]
fn output_is_independent_of_batch_split() {
    for group in [1, 10] {
        let cfg = NexmarkConfig {
            out_of_order_group_size: group,
            ..config(11, 10_000)
        };
        let whole = run_split(cfg.clone(), &[10_000]);
        assert_eq!(whole.len(), 10_000);
        for chunks in [&[1usize][..], &[1, 7, 1000], &[3, 250, 999, 2]] {
            let split = run_split(cfg.clone(), chunks);
            assert!(whole == split, "group {group}, chunks {chunks:?}");
        }
        // Random access gives the event sequential generation gives.
        let g = NexmarkGenerator::new(cfg.clone());
        for (n, e) in NexmarkGenerator::new(cfg).enumerate().step_by(97) {
            assert_eq!(g.event_at(n as u64), e);
        }
    }
}

#[test]
fn bounded_run_stops_after_its_events() {
    let mut g = NexmarkGenerator::new(config(1, 1234));
    assert_eq!(g.remaining(), 1234);
    let out = g.next_batch(5000);
    assert_eq!(out.len(), 1234);
    assert_eq!(g.events_generated(), 1234);
    assert_eq!(g.remaining(), 0);
    assert!(g.next_event().is_none());
    assert!(g.next_batch(1).is_empty());
}

#[test]
fn id_rules_match_the_spec() {
    let c = NexmarkConfig::default();
    // (event id, newest person, newest auction), worked out by hand from
    // lastBase0PersonId / lastBase0AuctionId for 1 : 3 : 46.
    for (event, person, auction) in [
        (0, 0, -1),
        (1, 0, 0),
        (3, 0, 2),
        (4, 0, 2),
        (49, 0, 2),
        (50, 1, 2),
        (51, 1, 3),
        (53, 1, 5),
        (99, 1, 5),
        (5000, 100, 299),
        (5001, 100, 300),
    ] {
        assert_eq!(last_base0_person_id(&c, event), person, "event {event}");
        assert_eq!(last_base0_auction_id(&c, event), auction, "event {event}");
    }
    assert_eq!(ids::hot_seller(&c, 5000), 100);
    assert_eq!(ids::hot_bidder(&c, 4999), 1);
    assert_eq!(ids::hot_bidder(&c, 5000), 101);
    assert_eq!(ids::hot_auction(&c, 5000), 200);
    assert_eq!(ids::hot_auction(&c, 5001), 300);
    assert_eq!(ids::hot_auction(&c, 0), 0);
}

#[test]
fn event_mix_is_exact_in_every_cycle() {
    for (pp, ap, bp) in [(1, 3, 46), (2, 5, 13)] {
        let total = pp + ap + bp;
        let cfg = NexmarkConfig {
            person_proportion: pp,
            auction_proportion: ap,
            bid_proportion: bp,
            ..config(3, 200 * total)
        };
        let evs = events(cfg.clone());
        assert_eq!(evs.len() as u64, 200 * total);
        for (cycle, chunk) in evs.chunks(total as usize).enumerate() {
            let kinds: Vec<EventKind> = chunk
                .iter()
                .map(|e| match e.record {
                    NexmarkRecord::Person(_) => EventKind::Person,
                    NexmarkRecord::Auction(_) => EventKind::Auction,
                    NexmarkRecord::Bid(_) => EventKind::Bid,
                })
                .collect();
            let expected: Vec<EventKind> = std::iter::repeat_n(EventKind::Person, pp as usize)
                .chain(std::iter::repeat_n(EventKind::Auction, ap as usize))
                .chain(std::iter::repeat_n(EventKind::Bid, bp as usize))
                .collect();
            assert_eq!(kinds, expected, "cycle {cycle} of {pp}:{ap}:{bp}");
            for (i, e) in chunk.iter().enumerate() {
                assert_eq!(e.event_id, cycle as u64 * total + i as u64);
                assert_eq!(EventKind::of(&cfg, e.event_id), kinds[i]);
            }
        }
    }
}

#[test]
fn person_and_auction_ids_count_up_from_1000() {
    let out = run_split(config(5, 50_000), &[4096]);
    assert_eq!(out.persons.len(), 1000);
    assert_eq!(out.auctions.len(), 3000);
    assert_eq!(out.bids.len(), 46_000);
    for (k, p) in out.persons.iter().enumerate() {
        assert_eq!(p.id, FIRST_PERSON_ID + k as i64);
    }
    for (k, a) in out.auctions.iter().enumerate() {
        assert_eq!(a.id, FIRST_AUCTION_ID + k as i64);
    }
}

/// For each bid and auction, in event order, with the newest person and
/// auction emitted before it: checks the spec's bounds, returns the largest
/// lead (id past the newest) of bid auctions, bidders and sellers.
fn check_references(cfg: &NexmarkConfig, evs: &[NexmarkEvent]) -> (i64, i64, i64, usize) {
    let hot_block =
        |id: i64, first: i64| (id - first) / HOT_GROUP as i64 * HOT_GROUP as i64 + first;
    let (mut newest_person, mut newest_auction) = (None::<i64>, None::<i64>);
    let (mut auction_lead, mut bidder_lead, mut seller_lead) = (i64::MIN, i64::MIN, i64::MIN);
    let mut bids_ahead = 0;
    let in_flight = cfg.num_in_flight_auctions as i64;
    let active = cfg.num_active_people as i64;
    for e in evs {
        match &e.record {
            NexmarkRecord::Person(p) => newest_person = Some(p.id),
            NexmarkRecord::Auction(a) => {
                let person = newest_person.expect("a person comes first");
                assert!(a.seller >= FIRST_PERSON_ID);
                assert!(a.seller <= person + PERSON_ID_LEAD as i64, "{a:?}");
                assert!(
                    a.seller >= person + 1 - active || a.seller == hot_block(person, 1000),
                    "seller {} with newest person {person}",
                    a.seller
                );
                seller_lead = seller_lead.max(a.seller - person);
                newest_auction = Some(a.id);
            }
            NexmarkRecord::Bid(b) => {
                let person = newest_person.expect("a person comes first");
                let auction = newest_auction.expect("an auction comes first");
                assert!(b.auction >= FIRST_AUCTION_ID && b.bidder >= FIRST_PERSON_ID);
                assert!(b.auction <= auction + AUCTION_ID_LEAD as i64, "{b:?}");
                assert!(
                    b.auction >= auction - in_flight || b.auction == hot_block(auction, 1000),
                    "auction {} with newest auction {auction}",
                    b.auction
                );
                assert!(b.bidder <= person + PERSON_ID_LEAD as i64, "{b:?}");
                assert!(
                    b.bidder >= person + 1 - active || b.bidder == hot_block(person, 1000) + 1,
                    "bidder {} with newest person {person}",
                    b.bidder
                );
                auction_lead = auction_lead.max(b.auction - auction);
                bidder_lead = bidder_lead.max(b.bidder - person);
                bids_ahead += usize::from(b.auction > auction);
            }
        }
    }
    (auction_lead, bidder_lead, seller_lead, bids_ahead)
}

#[test]
fn references_stay_within_the_spec_lead_window() {
    let cfg = config(9, 200_000);
    let evs = events(cfg.clone());
    let (auction_lead, bidder_lead, seller_lead, ahead) = check_references(&cfg, &evs);
    // The bounds are tight: references do run exactly that far ahead.
    assert_eq!(auction_lead, AUCTION_ID_LEAD as i64);
    assert_eq!(bidder_lead, PERSON_ID_LEAD as i64);
    assert_eq!(seller_lead, PERSON_ID_LEAD as i64);
    // Half the bids pick a random auction, 10 of whose 111 choices are ahead.
    let share = ahead as f64 / (evs.len() as f64 * 0.92);
    assert!((0.035..0.055).contains(&share), "{share}");

    // Smaller windows are honoured too.
    let cfg = NexmarkConfig {
        num_active_people: 20,
        num_in_flight_auctions: 5,
        ..config(10, 50_000)
    };
    check_references(&cfg, &events(cfg.clone()));
}

/// Shares of bids for the hot auction, bids by the hot bidder and auctions
/// by the hot seller of their time.
fn hot_shares(cfg: NexmarkConfig) -> (f64, f64, f64) {
    let hot = |id: i64| (id - 1000) / HOT_GROUP as i64 * HOT_GROUP as i64 + 1000;
    let (mut person, mut auction) = (0, 0);
    let (mut hot_auction, mut hot_bidder, mut hot_seller) = (0, 0, 0);
    let (mut bids, mut auctions) = (0, 0);
    for e in NexmarkGenerator::new(cfg) {
        match e.record {
            NexmarkRecord::Person(p) => person = p.id,
            NexmarkRecord::Auction(a) => {
                auction = a.id;
                auctions += 1;
                hot_seller += usize::from(a.seller == hot(person));
            }
            NexmarkRecord::Bid(b) => {
                bids += 1;
                hot_auction += usize::from(b.auction == hot(auction));
                hot_bidder += usize::from(b.bidder == hot(person) + 1);
            }
        }
    }
    (
        hot_auction as f64 / bids as f64,
        hot_bidder as f64 / bids as f64,
        hot_seller as f64 / auctions as f64,
    )
}

#[test]
fn hot_shares_follow_the_ratios() {
    let close = |got: f64, want: f64, tol: f64| {
        assert!((got - want).abs() < tol, "share {got}, expected {want}");
    };
    // Defaults 2, 4, 4: hot with probability 1/2, 3/4, 3/4 (plus the rare
    // random pick of the hot key).
    let (a, b, s) = hot_shares(config(21, 100_000));
    close(a, 0.5, 0.02);
    close(b, 0.75, 0.02);
    close(s, 0.75, 0.03);
    let (a, b, s) = hot_shares(NexmarkConfig {
        hot_auction_ratio: 10,
        hot_bidders_ratio: 1,
        hot_sellers_ratio: 2,
        ..config(22, 100_000)
    });
    close(a, 0.9, 0.02);
    assert!(
        b < 0.03,
        "ratio 1 never picks the hot bidder on purpose: {b}"
    );
    close(s, 0.5, 0.03);
}

#[test]
fn event_times_follow_the_rate() {
    let cfg = config(2, 100_000);
    let base = cfg.base_time_ms;
    let evs = events(cfg.clone());
    let mut per_second = HashMap::<i64, usize>::new();
    for (n, e) in evs.iter().enumerate() {
        // 10 000 events per second: ten per millisecond.
        assert_eq!(e.record.date_time(), base + n as i64 / 10, "event {n}");
        *per_second
            .entry((e.record.date_time() - base) / 1000)
            .or_default() += 1;
    }
    assert_eq!(per_second.len(), 10);
    assert!(per_second.values().all(|&n| n == 10_000));

    for rate in [3.0, 1234.5, 1_000_000.0] {
        let cfg = NexmarkConfig {
            first_event_rate: rate,
            base_time_ms: -5,
            ..config(2, 5000)
        };
        let mut g = NexmarkGenerator::new(cfg);
        assert_eq!(g.event_time_ms(), -5);
        let mut last = i64::MIN;
        for n in 0..5000u64 {
            let t = g.next_event().unwrap().record.date_time();
            // Truncated microseconds, then milliseconds: less than 1 ms early.
            let exact = n as f64 * 1000.0 / rate;
            let since = (t + 5) as f64;
            assert!(
                since <= exact + 1e-6 && since > exact - 1.0 - 1e-6,
                "rate {rate}, event {n}: {since} vs {exact}"
            );
            assert!(t >= last);
            assert_eq!(g.event_time_ms(), t);
            last = t;
        }
    }
}

#[test]
fn out_of_order_groups_reorder_events_without_changing_them() {
    // 953 = 1 (mod 7): groups of 7 (or any divisor of 952) are not shuffled.
    let g = 10u64;
    let n = 10 * 1000;
    let shuffled = NexmarkConfig {
        out_of_order_group_size: g,
        ..config(4, n)
    };
    let mut gen_ = NexmarkGenerator::new(shuffled);
    let mut evs = Vec::new();
    let mut watermark = i64::MIN;
    let mut out_of_order = 0;
    while let Some(e) = {
        let w = gen_.watermark_ms();
        assert!(w >= watermark);
        watermark = w;
        gen_.next_event()
    } {
        assert!(
            e.record.date_time() >= watermark,
            "event before the watermark"
        );
        let pos = evs.len() as u64;
        assert_eq!(
            e.event_id / g,
            pos / g,
            "event {} left its group",
            e.event_id
        );
        out_of_order += usize::from(e.event_id < pos);
        evs.push(e);
    }
    assert!(
        out_of_order > 1000,
        "the shuffle moved {out_of_order} events"
    );
    let mut sorted = evs.clone();
    sorted.sort_by_key(|e| e.event_id);
    assert_eq!(sorted, events(config(4, n)));
}

#[test]
fn prices_and_categories_are_in_range() {
    let out = run_split(config(6, 100_000), &[8192]);
    let mut below_1000_dollars = 0;
    for b in &out.bids {
        assert!((MIN_PRICE..=MAX_PRICE).contains(&b.price), "{}", b.price);
        below_1000_dollars += usize::from(b.price < 100_000);
    }
    // log-uniform over six decades: half below $10^3.
    let share = below_1000_dollars as f64 / out.bids.len() as f64;
    assert!((share - 0.5).abs() < 0.01, "{share}");
    let mut categories = HashSet::new();
    for a in &out.auctions {
        assert!((MIN_PRICE..=MAX_PRICE).contains(&a.initial_bid));
        let margin = a.reserve - a.initial_bid;
        assert!((MIN_PRICE..=MAX_PRICE).contains(&margin), "{a:?}");
        assert!((10..15).contains(&a.category), "{}", a.category);
        categories.insert(a.category);
    }
    assert_eq!(categories.len(), NUM_CATEGORIES as usize);
}

#[test]
fn auctions_expire_within_twice_the_in_flight_horizon() {
    let out = run_split(config(12, 100_000), &[100_000]);
    // 100 in-flight auctions take 100 * 50 / 3 = 1666 events, 166.6 ms at
    // 10 000 events/s: lengths are uniform in 1 ..= 2 * 166 or 167 ms.
    let mut total = 0;
    let mut longest = 0;
    for a in &out.auctions {
        let len = a.expires - a.date_time;
        assert!((1..=334).contains(&len), "{a:?}");
        total += len;
        longest = longest.max(len);
    }
    let mean = total as f64 / out.auctions.len() as f64;
    assert!((mean - 167.0).abs() < 5.0, "{mean}");
    assert!(longest > 320);
}

#[test]
fn records_are_padded_to_the_average_sizes() {
    let out = run_split(config(13, 100_000), &[100_000]);
    let mean = |sizes: Vec<usize>| sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let person = mean(
        out.persons
            .iter()
            .map(|p| {
                8 + p.name.len()
                    + p.email_address.len()
                    + p.credit_card.len()
                    + p.city.len()
                    + p.state.len()
                    + p.extra.len()
            })
            .collect(),
    );
    let auction = mean(
        out.auctions
            .iter()
            .map(|a| 48 + a.item_name.len() + a.description.len() + a.extra.len())
            .collect(),
    );
    let bid = mean(out.bids.iter().map(|b| 32 + b.extra.len()).collect());
    assert!((person - 200.0).abs() < 3.0, "person {person}");
    assert!((auction - 500.0).abs() < 5.0, "auction {auction}");
    assert!((bid - 100.0).abs() < 1.0, "bid {bid}");
    // Padding is random letters and varies by ±20 %.
    let lens: HashSet<usize> = out.bids.iter().map(|b| b.extra.len()).collect();
    assert_eq!(lens.iter().min(), Some(&(68 - 14)));
    assert_eq!(lens.iter().max(), Some(&(68 + 13)));
    assert!(
        out.bids
            .iter()
            .all(|b| b.extra.bytes().all(|c| c.is_ascii_lowercase()))
    );
    // A record already larger than the average gets no padding.
    let small = run_split(
        NexmarkConfig {
            avg_bid_byte_size: 20,
            ..config(13, 500)
        },
        &[500],
    );
    assert!(small.bids.iter().all(|b| b.extra.is_empty()));
}

#[test]
fn values_come_from_the_spec_lists() {
    let out = run_split(config(14, 50_000), &[50_000]);
    let (mut cities, mut states) = (HashSet::new(), HashSet::new());
    for p in &out.persons {
        assert!(US_CITIES.contains(&p.city) && US_STATES.contains(&p.state));
        cities.insert(p.city);
        states.insert(p.state);
        let (first, last) = p.name.split_once(' ').unwrap();
        assert!(FIRST_NAMES.contains(&first), "{}", p.name);
        assert!(LAST_NAMES.contains(&last), "{}", p.name);
        let (user, domain) = p.email_address.split_once('@').unwrap();
        let domain = domain.strip_suffix(".com").unwrap();
        for part in [user, domain] {
            assert!(
                part.len() <= 6 && part.trim() == part,
                "{}",
                p.email_address
            );
            assert!(part.bytes().all(|c| c == b' ' || c.is_ascii_lowercase()));
        }
        let groups: Vec<&str> = p.credit_card.split(' ').collect();
        assert_eq!(groups.len(), 4, "{}", p.credit_card);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 4 && g.bytes().all(|c| c.is_ascii_digit()))
        );
    }
    assert_eq!(cities.len(), US_CITIES.len());
    assert_eq!(states.len(), US_STATES.len());

    let mut url_of = HashMap::<&str, &str>::new();
    let mut hot = 0;
    for b in &out.bids {
        let url = url_of.entry(&*b.channel).or_insert(&*b.url);
        assert_eq!(*url, &*b.url, "channel {} has two URLs", b.channel);
        assert!(b.url.starts_with("https://www.nexmark.com/"), "{}", b.url);
        if HOT_CHANNELS.contains(&&*b.channel) {
            hot += 1;
            assert!(b.url.ends_with("/item.htm?query=1"), "{}", b.url);
        } else {
            let n: usize = b.channel.strip_prefix("channel-").unwrap().parse().unwrap();
            assert!(n < 10_000);
            assert!(b.url.ends_with("/item.htm?query=1") || b.url.contains("&channel_id="));
        }
    }
    let share = hot as f64 / out.bids.len() as f64;
    assert!((share - 0.5).abs() < 0.02, "{share}");
    assert!(
        url_of.len() > 4000,
        "cold channels are spread: {}",
        url_of.len()
    );
}

#[test]
fn batches_and_json_follow_the_avsc() {
    let out = run_split(config(15, 2000), &[2000]);
    let columns = [
        &[
            "id",
            "name",
            "email_address",
            "credit_card",
            "city",
            "state",
            "date_time",
            "extra",
        ][..],
        &[
            "id",
            "item_name",
            "description",
            "initial_bid",
            "reserve",
            "date_time",
            "expires",
            "seller",
            "category",
            "extra",
        ],
        &[
            "auction",
            "bidder",
            "price",
            "channel",
            "url",
            "date_time",
            "extra",
        ],
    ];
    let batches = out.to_batches();
    let json = out.to_json_lines().unwrap();
    let rows = [out.persons.len(), out.auctions.len(), out.bids.len()];
    for (i, table) in NexmarkTable::ALL.into_iter().enumerate() {
        let schema = table.arrow_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, columns[i], "{}", table.name());
        assert_eq!(batches[i].schema(), schema);
        assert_eq!(batches[i].num_rows(), rows[i]);
        assert_eq!(
            schema.field_with_name("date_time").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert!(schema.fields().iter().all(|f| !f.is_nullable()));
        let lines: Vec<serde_json::Value> = json[i]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), rows[i]);
        let keys: Vec<&str> = lines[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = columns[i].to_vec();
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
    }
    // The JSON holds the record values, timestamps as RFC 3339.
    let first_bid: serde_json::Value =
        serde_json::from_slice(json[2].split(|&b| b == b'\n').next().unwrap()).unwrap();
    let b = &out.bids[0];
    assert_eq!(first_bid["auction"], b.auction);
    assert_eq!(first_bid["url"], &*b.url);
    let ts =
        chrono::DateTime::parse_from_rfc3339(first_bid["date_time"].as_str().unwrap()).unwrap();
    assert_eq!(ts.timestamp_millis(), b.date_time);

    let empty = NexmarkOutput::default().to_batches();
    assert!(empty.iter().all(|b| b.num_rows() == 0));
}

#[test]
fn the_avro_codec_encodes_the_tables() {
    let out = run_split(config(16, 3000), &[3000]);
    for (table, batch) in NexmarkTable::ALL.into_iter().zip(out.to_batches()) {
        // Message bodies (Kafka) decode back to the same rows.
        let enc = AvroEncoder::new(table.arrow_schema(), table.avro_schema()).unwrap();
        let (mut body, mut ends) = (Vec::new(), Vec::new());
        enc.encode_batch(&batch, &mut body, &mut ends).unwrap();
        let mut dec = AvroDecoder::new(table.avro_schema()).unwrap();
        let mut start = 0;
        for end in ends {
            dec.decode(&body[start..end]).unwrap();
            start = end;
        }
        assert_eq!(dec.finish(), batch, "{}", table.name());
        // Container files (`produce --format avro`) too.
        let mut w = OcfWriter::new(Vec::new(), table.avro_schema(), table.arrow_schema()).unwrap();
        w.write_batch(&batch).unwrap();
        let file = w.finish().unwrap();
        let mut r = OcfReader::open(Cursor::new(file)).unwrap();
        assert_eq!(r.next_batch().unwrap().unwrap(), batch);
    }
}

#[test]
fn config_validation_rejects_unrunnable_configs() {
    assert!(NexmarkConfig::default().validate().is_ok());
    let bad = [
        NexmarkConfig {
            first_event_rate: 0.0,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            first_event_rate: f64::NAN,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            person_proportion: 0,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            auction_proportion: 0,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            hot_auction_ratio: 0,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            out_of_order_group_size: 0,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            out_of_order_group_size: 953 * 2,
            ..NexmarkConfig::default()
        },
        NexmarkConfig {
            events: Some(MAX_EVENTS + 1),
            ..NexmarkConfig::default()
        },
    ];
    for c in bad {
        assert!(NexmarkGenerator::try_new(c.clone()).is_err(), "{c:?}");
    }
    // Bids are optional.
    assert!(
        NexmarkConfig {
            bid_proportion: 0,
            ..NexmarkConfig::default()
        }
        .validate()
        .is_ok()
    );
}
