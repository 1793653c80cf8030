//! The three record types the simulator emits, with the fields of the Avro
//! schemas under `schemas/`, and their conversion to Arrow record batches with
//! exactly the [`SourceTable`] schemas.
//!
//! Strings repeated on every record (symbol, exchange, trader, order ids) are
//! shared `Arc<str>`s, enumerations (`side`, `action`, `status`, `order_type`)
//! are `&'static str`, so generating a record allocates nothing.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::record_batch::RecordBatch;
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::codec::schema::SourceTable;

/// A top-of-book quote with the last trade on one exchange (`MarketTick`).
#[derive(Clone, Debug, PartialEq)]
pub struct MarketTick {
    pub symbol: Arc<str>,
    pub exchange: Arc<str>,
    /// Last trade price, within `[bid, ask]`.
    pub price: f64,
    pub bid: f64,
    pub ask: f64,
    pub bid_size: i64,
    pub ask_size: i64,
    /// Shares in the last trade.
    pub volume: i64,
    /// Aggressor side: `"buy"` or `"sell"`.
    pub side: &'static str,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// One step in an order's life cycle (`OrderEvent`).
#[derive(Clone, Debug, PartialEq)]
pub struct OrderEvent {
    pub order_id: Arc<str>,
    pub client_order_id: Arc<str>,
    pub trader_id: Arc<str>,
    pub symbol: Arc<str>,
    /// `"buy"` or `"sell"`.
    pub side: &'static str,
    /// `"market"` or `"limit"`.
    pub order_type: &'static str,
    pub quantity: i64,
    /// Limit price; `None` for market orders.
    pub price: Option<f64>,
    /// `"new"`, `"partially_filled"`, `"filled"`, `"cancelled"` or `"rejected"`.
    pub status: &'static str,
    pub filled_quantity: i64,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// A change to one price level of a symbol's order book (`BookUpdate`).
#[derive(Clone, Debug, PartialEq)]
pub struct BookUpdate {
    pub symbol: Arc<str>,
    /// `"bid"` or `"ask"`.
    pub side: &'static str,
    pub price: f64,
    /// Shares resting at the level after the update (0 on delete).
    pub quantity: i64,
    /// Depth of the level at the time of the update, 0 = best.
    pub level: i32,
    /// `"add"`, `"update"` or `"delete"`.
    pub action: &'static str,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// Values of the `side`, `order_type`, `status` and `action` fields.
pub mod values {
    pub const BUY: &str = "buy";
    pub const SELL: &str = "sell";
    pub const MARKET: &str = "market";
    pub const LIMIT: &str = "limit";
    pub const NEW: &str = "new";
    pub const PARTIALLY_FILLED: &str = "partially_filled";
    pub const FILLED: &str = "filled";
    pub const CANCELLED: &str = "cancelled";
    pub const REJECTED: &str = "rejected";
    pub const BID: &str = "bid";
    pub const ASK: &str = "ask";
    pub const ADD: &str = "add";
    pub const UPDATE: &str = "update";
    pub const DELETE: &str = "delete";
}

impl OrderEvent {
    /// True for `filled`, `cancelled` and `rejected`: no event follows.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status,
            values::FILLED | values::CANCELLED | values::REJECTED
        )
    }
}

// Serialized with the Avro field names (e.g. for JSON lines); `ts` as epoch millis.
impl Serialize for MarketTick {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("MarketTick", 10)?;
        s.serialize_field("symbol", &*self.symbol)?;
        s.serialize_field("exchange", &*self.exchange)?;
        s.serialize_field("price", &self.price)?;
        s.serialize_field("bid", &self.bid)?;
        s.serialize_field("ask", &self.ask)?;
        s.serialize_field("bid_size", &self.bid_size)?;
        s.serialize_field("ask_size", &self.ask_size)?;
        s.serialize_field("volume", &self.volume)?;
        s.serialize_field("side", self.side)?;
        s.serialize_field("ts", &self.ts)?;
        s.end()
    }
}

impl Serialize for OrderEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("OrderEvent", 11)?;
        s.serialize_field("order_id", &*self.order_id)?;
        s.serialize_field("client_order_id", &*self.client_order_id)?;
        s.serialize_field("trader_id", &*self.trader_id)?;
        s.serialize_field("symbol", &*self.symbol)?;
        s.serialize_field("side", self.side)?;
        s.serialize_field("order_type", self.order_type)?;
        s.serialize_field("quantity", &self.quantity)?;
        s.serialize_field("price", &self.price)?;
        s.serialize_field("status", self.status)?;
        s.serialize_field("filled_quantity", &self.filled_quantity)?;
        s.serialize_field("ts", &self.ts)?;
        s.end()
    }
}

impl Serialize for BookUpdate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("BookUpdate", 7)?;
        s.serialize_field("symbol", &*self.symbol)?;
        s.serialize_field("side", self.side)?;
        s.serialize_field("price", &self.price)?;
        s.serialize_field("quantity", &self.quantity)?;
        s.serialize_field("level", &self.level)?;
        s.serialize_field("action", self.action)?;
        s.serialize_field("ts", &self.ts)?;
        s.end()
    }
}

fn finish(table: SourceTable, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(table.arrow_schema(), columns)
        .expect("simulator columns follow the source table schema")
}

fn strings(n: usize, avg_len: usize) -> StringBuilder {
    StringBuilder::with_capacity(n, n * avg_len)
}

/// Market ticks as a batch with the `market_ticks` schema.
pub fn ticks_to_batch(ticks: &[MarketTick]) -> RecordBatch {
    let n = ticks.len();
    let mut symbol = strings(n, 4);
    let mut exchange = strings(n, 5);
    let mut price = Float64Builder::with_capacity(n);
    let mut bid = Float64Builder::with_capacity(n);
    let mut ask = Float64Builder::with_capacity(n);
    let mut bid_size = Int64Builder::with_capacity(n);
    let mut ask_size = Int64Builder::with_capacity(n);
    let mut volume = Int64Builder::with_capacity(n);
    let mut side = strings(n, 4);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n);
    for t in ticks {
        symbol.append_value(&t.symbol);
        exchange.append_value(&t.exchange);
        price.append_value(t.price);
        bid.append_value(t.bid);
        ask.append_value(t.ask);
        bid_size.append_value(t.bid_size);
        ask_size.append_value(t.ask_size);
        volume.append_value(t.volume);
        side.append_value(t.side);
        ts.append_value(t.ts);
    }
    finish(
        SourceTable::MarketTicks,
        vec![
            Arc::new(symbol.finish()),
            Arc::new(exchange.finish()),
            Arc::new(price.finish()),
            Arc::new(bid.finish()),
            Arc::new(ask.finish()),
            Arc::new(bid_size.finish()),
            Arc::new(ask_size.finish()),
            Arc::new(volume.finish()),
            Arc::new(side.finish()),
            Arc::new(ts.finish()),
        ],
    )
}

/// Order events as a batch with the `order_events` schema (`price` null for
/// market orders).
pub fn orders_to_batch(orders: &[OrderEvent]) -> RecordBatch {
    let n = orders.len();
    let mut order_id = strings(n, 11);
    let mut client_order_id = strings(n, 14);
    let mut trader_id = strings(n, 7);
    let mut symbol = strings(n, 4);
    let mut side = strings(n, 4);
    let mut order_type = strings(n, 6);
    let mut quantity = Int64Builder::with_capacity(n);
    let mut price = Float64Builder::with_capacity(n);
    let mut status = strings(n, 8);
    let mut filled_quantity = Int64Builder::with_capacity(n);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n);
    for o in orders {
        order_id.append_value(&o.order_id);
        client_order_id.append_value(&o.client_order_id);
        trader_id.append_value(&o.trader_id);
        symbol.append_value(&o.symbol);
        side.append_value(o.side);
        order_type.append_value(o.order_type);
        quantity.append_value(o.quantity);
        price.append_option(o.price);
        status.append_value(o.status);
        filled_quantity.append_value(o.filled_quantity);
        ts.append_value(o.ts);
    }
    finish(
        SourceTable::OrderEvents,
        vec![
            Arc::new(order_id.finish()),
            Arc::new(client_order_id.finish()),
            Arc::new(trader_id.finish()),
            Arc::new(symbol.finish()),
            Arc::new(side.finish()),
            Arc::new(order_type.finish()),
            Arc::new(quantity.finish()),
            Arc::new(price.finish()),
            Arc::new(status.finish()),
            Arc::new(filled_quantity.finish()),
            Arc::new(ts.finish()),
        ],
    )
}

/// Book updates as a batch with the `book_updates` schema.
pub fn books_to_batch(books: &[BookUpdate]) -> RecordBatch {
    let n = books.len();
    let mut symbol = strings(n, 4);
    let mut side = strings(n, 3);
    let mut price = Float64Builder::with_capacity(n);
    let mut quantity = Int64Builder::with_capacity(n);
    let mut level = Int32Builder::with_capacity(n);
    let mut action = strings(n, 6);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n);
    for b in books {
        symbol.append_value(&b.symbol);
        side.append_value(b.side);
        price.append_value(b.price);
        quantity.append_value(b.quantity);
        level.append_value(b.level);
        action.append_value(b.action);
        ts.append_value(b.ts);
    }
    finish(
        SourceTable::BookUpdates,
        vec![
            Arc::new(symbol.finish()),
            Arc::new(side.finish()),
            Arc::new(price.finish()),
            Arc::new(quantity.finish()),
            Arc::new(level.finish()),
            Arc::new(action.finish()),
            Arc::new(ts.finish()),
        ],
    )
}
