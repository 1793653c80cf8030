CREATE STREAM rolling_stats AS
SELECT symbol,
       AVG(price) as ma_20,
       STDDEV(price) as stddev_20,
       MIN(price) as min_20,
       MAX(price) as max_20,
       COUNT(*) as sample_count
FROM market_ticks
GROUP BY symbol, HOP(ts, INTERVAL '5' SECOND, INTERVAL '100' SECOND)
EMIT ON WINDOW CLOSE;
