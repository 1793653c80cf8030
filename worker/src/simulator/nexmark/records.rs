//! The three Nexmark record types with the columns of the Flink Nexmark DDL
//! (snake case), their tables, and their conversion to Arrow record batches
//! and JSON lines.
//!
//! The `.avsc` files under `schemas/` (`nexmark_person.avsc`,
//! `nexmark_auction.avsc`, `nexmark_bid.avsc`) are the single source of
//! truth for the columns: the Arrow schema of each table is derived from its
//! Avro schema, and a batch that does not match it is a bug (the conversion
//! panics, and a test builds every table). Timestamps are epoch milliseconds,
//! `Timestamp(Millisecond, None)` in Arrow like the market tables.

use std::sync::{Arc, OnceLock};

use apache_avro::Schema as AvroSchema;
use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::codec::{CodecError, JsonLinesEncoder, avro_to_arrow};

/// A person who sells or bids (`Person`).
#[derive(Clone, Debug, PartialEq)]
pub struct Person {
    /// From [`FIRST_PERSON_ID`](super::FIRST_PERSON_ID), one per person event.
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    pub extra: String,
}

/// An item up for auction (`Auction`).
#[derive(Clone, Debug, PartialEq)]
pub struct Auction {
    /// From [`FIRST_AUCTION_ID`](super::FIRST_AUCTION_ID), one per auction event.
    pub id: i64,
    pub item_name: String,
    pub description: String,
    /// Cents.
    pub initial_bid: i64,
    /// Cents, above `initial_bid`.
    pub reserve: i64,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    /// End of the auction, after `date_time`, epoch milliseconds.
    pub expires: i64,
    /// Person id.
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

/// A bid on an auction (`Bid`).
#[derive(Clone, Debug, PartialEq)]
pub struct Bid {
    /// Auction id.
    pub auction: i64,
    /// Person id.
    pub bidder: i64,
    /// Cents.
    pub price: i64,
    pub channel: Arc<str>,
    pub url: Arc<str>,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    pub extra: String,
}

/// The three Nexmark tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NexmarkTable {
    Person = 0,
    Auction = 1,
    Bid = 2,
}

impl NexmarkTable {
    pub const ALL: [NexmarkTable; 3] = [Self::Person, Self::Auction, Self::Bid];

    /// Table name in SQL, also the base name of files (`person.jsonl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Auction => "auction",
            Self::Bid => "bid",
        }
    }

    /// Default Kafka topic of the table (`nexmark-bid`): the name after
    /// the prefix `nexmark-`, as the queries of `benchmarks/nexmark` declare.
    pub fn topic(self) -> &'static str {
        match self {
            Self::Person => "nexmark-person",
            Self::Auction => "nexmark-auction",
            Self::Bid => "nexmark-bid",
        }
    }

    /// Column the table's Kafka messages are keyed by: `id` for person and
    /// auction, `auction` for bid (the queries' `'key'`).
    pub fn key_column(self) -> &'static str {
        match self {
            Self::Person | Self::Auction => "id",
            Self::Bid => "auction",
        }
    }

    /// The embedded `.avsc` text.
    pub fn avsc(self) -> &'static str {
        match self {
            Self::Person => include_str!("../../../../schemas/nexmark_person.avsc"),
            Self::Auction => include_str!("../../../../schemas/nexmark_auction.avsc"),
            Self::Bid => include_str!("../../../../schemas/nexmark_bid.avsc"),
        }
    }

    /// The parsed Avro schema (parsed once; a test parses all three).
    pub fn avro_schema(self) -> &'static AvroSchema {
        static CACHE: OnceLock<Vec<AvroSchema>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|t| AvroSchema::parse_str(t.avsc()).expect("embedded .avsc parses"))
                .collect()
        });
        &all[self as usize]
    }

    /// The Arrow schema of the table's batches, from its Avro schema.
    pub fn arrow_schema(self) -> SchemaRef {
        static CACHE: OnceLock<Vec<SchemaRef>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|t| avro_to_arrow(t.avro_schema()).expect("embedded .avsc maps to Arrow"))
                .collect()
        });
        Arc::clone(&all[self as usize])
    }
}

fn finish(table: NexmarkTable, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(table.arrow_schema(), columns)
        .expect("Nexmark columns follow the table's .avsc")
}

fn strings(n: usize, avg_len: usize) -> StringBuilder {
    StringBuilder::with_capacity(n, n * avg_len)
}

/// People as a batch with the `person` schema.
pub fn persons_to_batch(persons: &[Person]) -> RecordBatch {
    let n = persons.len();
    let mut id = Int64Builder::with_capacity(n);
    let mut name = strings(n, 12);
    let mut email = strings(n, 14);
    let mut card = strings(n, 19);
    let mut city = strings(n, 8);
    let mut state = strings(n, 2);
    let mut date_time = TimestampMillisecondBuilder::with_capacity(n);
    let mut extra = strings(n, 140);
    for p in persons {
        id.append_value(p.id);
        name.append_value(&p.name);
        email.append_value(&p.email_address);
        card.append_value(&p.credit_card);
        city.append_value(p.city);
        state.append_value(p.state);
        date_time.append_value(p.date_time);
        extra.append_value(&p.extra);
    }
    finish(
        NexmarkTable::Person,
        vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(email.finish()),
            Arc::new(card.finish()),
            Arc::new(city.finish()),
            Arc::new(state.finish()),
            Arc::new(date_time.finish()),
            Arc::new(extra.finish()),
        ],
    )
}

/// Auctions as a batch with the `auction` schema.
pub fn auctions_to_batch(auctions: &[Auction]) -> RecordBatch {
    let n = auctions.len();
    let mut id = Int64Builder::with_capacity(n);
    let mut item_name = strings(n, 10);
    let mut description = strings(n, 50);
    let mut initial_bid = Int64Builder::with_capacity(n);
    let mut reserve = Int64Builder::with_capacity(n);
    let mut date_time = TimestampMillisecondBuilder::with_capacity(n);
    let mut expires = TimestampMillisecondBuilder::with_capacity(n);
    let mut seller = Int64Builder::with_capacity(n);
    let mut category = Int64Builder::with_capacity(n);
    let mut extra = strings(n, 390);
    for a in auctions {
        id.append_value(a.id);
        item_name.append_value(&a.item_name);
        description.append_value(&a.description);
        initial_bid.append_value(a.initial_bid);
        reserve.append_value(a.reserve);
        date_time.append_value(a.date_time);
        expires.append_value(a.expires);
        seller.append_value(a.seller);
        category.append_value(a.category);
        extra.append_value(&a.extra);
    }
    finish(
        NexmarkTable::Auction,
        vec![
            Arc::new(id.finish()),
            Arc::new(item_name.finish()),
            Arc::new(description.finish()),
            Arc::new(initial_bid.finish()),
            Arc::new(reserve.finish()),
            Arc::new(date_time.finish()),
            Arc::new(expires.finish()),
            Arc::new(seller.finish()),
            Arc::new(category.finish()),
            Arc::new(extra.finish()),
        ],
    )
}

/// Bids as a batch with the `bid` schema.
pub fn bids_to_batch(bids: &[Bid]) -> RecordBatch {
    let n = bids.len();
    let mut auction = Int64Builder::with_capacity(n);
    let mut bidder = Int64Builder::with_capacity(n);
    let mut price = Int64Builder::with_capacity(n);
    let mut channel = strings(n, 10);
    let mut url = strings(n, 60);
    let mut date_time = TimestampMillisecondBuilder::with_capacity(n);
    let mut extra = strings(n, 68);
    for b in bids {
        auction.append_value(b.auction);
        bidder.append_value(b.bidder);
        price.append_value(b.price);
        channel.append_value(&b.channel);
        url.append_value(&b.url);
        date_time.append_value(b.date_time);
        extra.append_value(&b.extra);
    }
    finish(
        NexmarkTable::Bid,
        vec![
            Arc::new(auction.finish()),
            Arc::new(bidder.finish()),
            Arc::new(price.finish()),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(date_time.finish()),
            Arc::new(extra.finish()),
        ],
    )
}

/// Events of one call, split by table, each table in generation order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NexmarkOutput {
    pub persons: Vec<Person>,
    pub auctions: Vec<Auction>,
    pub bids: Vec<Bid>,
}

impl NexmarkOutput {
    /// Arrow batches in [`NexmarkTable::ALL`] order: person, auction, bid.
    pub fn to_batches(&self) -> [RecordBatch; 3] {
        [
            persons_to_batch(&self.persons),
            auctions_to_batch(&self.auctions),
            bids_to_batch(&self.bids),
        ]
    }

    /// JSON lines per table in [`NexmarkTable::ALL`] order, written by the
    /// codec's [`JsonLinesEncoder`] (what `produce` writes for the market
    /// tables): the `.avsc` field names, timestamps as the encoder writes them.
    pub fn to_json_lines(&self) -> Result<[Vec<u8>; 3], CodecError> {
        let encoder = JsonLinesEncoder::new();
        let mut out: [Vec<u8>; 3] = Default::default();
        for (batch, buf) in self.to_batches().iter().zip(&mut out) {
            encoder.encode_batch(batch, buf)?;
        }
        Ok(out)
    }

    /// Events of all three tables.
    pub fn len(&self) -> usize {
        self.persons.len() + self.auctions.len() + self.bids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s events after this output's.
    pub fn append(&mut self, mut other: NexmarkOutput) {
        self.persons.append(&mut other.persons);
        self.auctions.append(&mut other.auctions);
        self.bids.append(&mut other.bids);
    }
}
