CREATE STREAM volume_anomalies AS
SELECT symbol,
       SUM(volume) as total_volume,
       AVG(volume) as avg_volume,
       MAX(volume) as max_volume,
       COUNT(*) as trade_count
FROM market_ticks
GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND)
HAVING SUM(volume) > 1000;
