-- The trading alerts of a desk: price moves, volume spikes and one-sided
-- order flow per symbol, each its own stream, merged into one `alerts`
-- stream. price_moves and volume_1s only feed the alerts after them.

-- Every tick's move against the reference price: the first price of the
-- 10 seconds up to the tick, per symbol.
CREATE STREAM price_moves AS
SELECT symbol, ts, price, ref_price, (price - ref_price) / ref_price * 100 AS change_pct
FROM (
  SELECT symbol, ts, price,
         FIRST_VALUE(price) OVER (PARTITION BY symbol ORDER BY ts
           RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS ref_price
  FROM market_ticks
) AS m;

-- A price that moved more than 5 % within 10 seconds, once: at the tick
-- whose move crosses 5 % (the tick before moved less).
CREATE STREAM price_alerts AS
SELECT symbol, ts, price, ref_price, change_pct
FROM (
  SELECT symbol, ts, price, ref_price, change_pct,
         LAG(change_pct) OVER (PARTITION BY symbol ORDER BY ts) AS prev_change_pct
  FROM price_moves
) AS p
WHERE ABS(change_pct) > 5 AND COALESCE(ABS(prev_change_pct), 0) <= 5;

-- Traded volume per symbol and second.
CREATE STREAM volume_1s AS
SELECT symbol, window_start, window_end, SUM(volume) AS volume, COUNT(*) AS trades
FROM market_ticks
GROUP BY symbol, TUMBLE(ts, INTERVAL '1' SECOND);

-- A second with more than 3x the average volume of the 20 seconds before
-- it (a 20-period moving average).
CREATE STREAM volume_spikes AS
SELECT symbol, window_end AS ts, volume, avg_volume_20, volume / avg_volume_20 AS ratio
FROM (
  SELECT symbol, window_end, volume,
         AVG(volume) OVER (PARTITION BY symbol ORDER BY window_end
           ROWS BETWEEN 20 PRECEDING AND 1 PRECEDING) AS avg_volume_20
  FROM volume_1s
) AS v
WHERE volume > 3 * avg_volume_20;

-- One-sided order flow: over the last minute (every 10 seconds), one side
-- holds more than 70 % of the quantity of new orders in a symbol (at least
-- 20 orders, so a quiet start does not count).
CREATE STREAM order_imbalance AS
SELECT symbol, window_start, window_end,
       SUM(CASE WHEN side = 'buy' THEN quantity ELSE 0 END) AS buy_quantity,
       SUM(CASE WHEN side = 'sell' THEN quantity ELSE 0 END) AS sell_quantity,
       100.0 * GREATEST(SUM(CASE WHEN side = 'buy' THEN quantity ELSE 0 END),
                        SUM(CASE WHEN side = 'sell' THEN quantity ELSE 0 END)) / SUM(quantity) AS imbalance_pct,
       COUNT(*) AS orders
FROM order_events
WHERE status = 'new'
GROUP BY symbol, HOP(ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)
HAVING COUNT(*) >= 20
   AND 100.0 * GREATEST(SUM(CASE WHEN side = 'buy' THEN quantity ELSE 0 END),
                        SUM(CASE WHEN side = 'sell' THEN quantity ELSE 0 END)) / SUM(quantity) > 70;

-- Every alert in one stream: what fired, its measure and its threshold.
CREATE STREAM alerts AS
SELECT symbol, ts, 'price_move' AS alert, change_pct AS value, 5.0 AS threshold FROM price_alerts
UNION ALL
SELECT symbol, ts, 'volume_spike', ratio, 3.0 FROM volume_spikes
UNION ALL
SELECT symbol, window_end, 'order_imbalance', imbalance_pct, 70.0 FROM order_imbalance;
