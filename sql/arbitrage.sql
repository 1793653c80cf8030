-- Cross-exchange arbitrage from the latest quote of every exchange, not from
-- drift inside a window: both streams are updating (GROUP BY without a
-- window), so each holds one row per key, replaced as quotes arrive.

-- The latest bid and ask per symbol and exchange (by event time).
CREATE STREAM latest_quotes AS
SELECT symbol, exchange, LAST_VALUE(bid) AS bid, LAST_VALUE(ask) AS ask, MAX(ts) AS quoted_at
FROM market_ticks
GROUP BY symbol, exchange;

-- A symbol whose best bid on one exchange is at least 10 basis points above
-- its best ask on another: buy at best_ask, sell at best_bid. The row is
-- deleted when the gap closes.
CREATE STREAM arbitrage AS
SELECT symbol, MAX(bid) AS best_bid, MIN(ask) AS best_ask,
       (MAX(bid) - MIN(ask)) / MIN(ask) * 10000 AS edge_bps,
       COUNT(*) AS exchanges, MAX(quoted_at) AS as_of
FROM latest_quotes
GROUP BY symbol
HAVING (MAX(bid) - MIN(ask)) / MIN(ask) * 10000 >= 10;
