CREATE STREAM ohlc_5s AS
SELECT symbol,
       FIRST_VALUE(price) as open,
       MAX(price) as high,
       MIN(price) as low,
       LAST_VALUE(price) as close,
       SUM(volume) as volume,
       SUM(price * volume) / SUM(volume) as vwap,
       COUNT(*) as tick_count
FROM market_ticks
GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND)
EMIT ON WINDOW CLOSE;
