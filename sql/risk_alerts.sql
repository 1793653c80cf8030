-- The risk monitor of a desk (seed 002): each trader's positions from the
-- fills of their orders, marked to the market price at every fill, with
-- alerts when a position grows beyond its limit or a trader's day loses
-- more than allowed. Positions are intraday: they start flat at the
-- trading day's start (UTC), so a day's P&L is its positions' P&L.
-- Limits: 1,000,000 of exposure per position, 250,000 of loss per day.

-- Every fill: what an order event filled beyond the event before it (order
-- events carry the order's cumulative filled quantity), signed by side.
-- An order lives minutes at most; its partition is dropped an hour after.
CREATE STREAM fills WITH ('state.ttl' = '1 hour') AS
SELECT order_id, trader_id, symbol, ts, price AS limit_price,
       CASE WHEN side = 'buy' THEN 1 ELSE -1 END
         * (filled_quantity - COALESCE(filled_before, 0)) AS quantity
FROM (
  SELECT order_id, trader_id, symbol, side, price, ts, filled_quantity,
         LAG(filled_quantity) OVER (PARTITION BY order_id ORDER BY ts) AS filled_before
  FROM order_events
) AS o
WHERE filled_quantity > COALESCE(filled_before, 0);

-- Each fill priced: at the order's limit, or for a market order at the
-- last trade in the symbol at or before the fill; marked to that trade.
CREATE STREAM priced_fills AS
SELECT f.trader_id, f.symbol, f.ts, f.quantity,
       COALESCE(f.limit_price, t.price) AS fill_price, t.price AS mark_price
FROM fills f ASOF JOIN market_ticks t
  MATCH_CONDITION (f.ts >= t.ts) ON f.symbol = t.symbol;

-- A trader's fills in a symbol within one millisecond, as one: bought and
-- sold quantity and value, so that a position changes once per instant.
CREATE STREAM fills_1ms AS
SELECT trader_id, symbol, window_end,
       SUM(CASE WHEN quantity > 0 THEN quantity ELSE 0 END) AS bought,
       SUM(CASE WHEN quantity > 0 THEN quantity * fill_price ELSE 0 END) AS bought_value,
       SUM(CASE WHEN quantity < 0 THEN -quantity ELSE 0 END) AS sold,
       SUM(CASE WHEN quantity < 0 THEN -quantity * fill_price ELSE 0 END) AS sold_value,
       MAX(mark_price) AS mark_price
FROM priced_fills
GROUP BY trader_id, symbol, TUMBLE(ts, INTERVAL '1' MILLISECOND);

-- Positions per trader, symbol and day after every fill: net quantity,
-- average cost of the open quantity, exposure at the mark, realised P&L
-- (matched quantity times the average sell less the average buy) and
-- unrealised P&L (open quantity times the mark less its average cost).
-- pnl_change is what the fill changed the position's P&L by, so that the
-- trader's day P&L is their sum.
CREATE STREAM positions WITH ('state.ttl' = '1 day') AS
SELECT trader_id, symbol, ts, trading_day, position, exposure,
       position_before * mark_price AS exposure_before,
       average_cost, realised_pnl,
       CASE WHEN position = 0 THEN 0.0 ELSE position * (mark_price - average_cost) END AS unrealised_pnl,
       position_before * (mark_price - COALESCE(mark_before, mark_price))
         + (bought_now - sold_now) * mark_price - (bought_value_now - sold_value_now) AS pnl_change
FROM (
  SELECT trader_id, symbol, ts, trading_day, mark_price, mark_before,
         bought_now, sold_now, bought_value_now, sold_value_now,
         bought - sold AS position,
         bought - sold - (bought_now - sold_now) AS position_before,
         (bought - sold) * mark_price AS exposure,
         CASE WHEN bought > sold THEN bought_value / bought
              WHEN sold > bought THEN sold_value / sold END AS average_cost,
         CASE WHEN bought > 0 AND sold > 0
              THEN LEAST(bought, sold) * (sold_value / sold - bought_value / bought)
              ELSE 0.0 END AS realised_pnl
  FROM (
    SELECT trader_id, symbol, window_end AS ts, date_trunc('day', window_end) AS trading_day,
           mark_price, bought AS bought_now, sold AS sold_now,
           bought_value AS bought_value_now, sold_value AS sold_value_now,
           LAG(mark_price) OVER w AS mark_before,
           SUM(bought) OVER w AS bought, SUM(sold) OVER w AS sold,
           SUM(bought_value) OVER w AS bought_value, SUM(sold_value) OVER w AS sold_value
    FROM fills_1ms
    WINDOW w AS (PARTITION BY trader_id, symbol, date_trunc('day', window_end) ORDER BY window_end)
  ) AS running
) AS p;

-- Each trader's P&L since the day's start, after every fill.
CREATE STREAM trader_pnl WITH ('state.ttl' = '1 day') AS
SELECT trader_id, ts, trading_day,
       SUM(pnl_change) OVER (PARTITION BY trader_id, trading_day ORDER BY ts) AS day_pnl
FROM positions;

-- A day's loss crossing the limit, once: the P&L before was within it.
CREATE STREAM daily_loss_alerts WITH ('state.ttl' = '1 day') AS
SELECT trader_id, ts, day_pnl
FROM (
  SELECT trader_id, ts, day_pnl,
         LAG(day_pnl) OVER (PARTITION BY trader_id, trading_day ORDER BY ts) AS pnl_before
  FROM trader_pnl
) AS t
WHERE day_pnl < -250000 AND COALESCE(pnl_before, 0) >= -250000;

-- The desk's risk alerts, in the columns of `alerts` plus the trader: a
-- fill that took a position beyond 1,000,000 of exposure, and a day's loss
-- beyond 250,000 (a trader's, so without a symbol).
CREATE STREAM risk_alerts AS
SELECT symbol, ts, 'POSITION_LIMIT_EXCEEDED' AS alert, exposure AS value,
       1000000.0 AS threshold, trader_id
FROM positions
WHERE ABS(exposure) > 1000000 AND ABS(exposure_before) <= 1000000
UNION ALL
SELECT CAST(NULL AS VARCHAR), ts, 'DAILY_LOSS_LIMIT', day_pnl, -250000.0, trader_id
FROM daily_loss_alerts;
