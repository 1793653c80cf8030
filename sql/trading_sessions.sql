CREATE STREAM trading_sessions AS
SELECT symbol,
       COUNT(*) as tick_count,
       SUM(volume) as session_volume,
       MIN(price) as session_low,
       MAX(price) as session_high,
       FIRST_VALUE(price) as session_open,
       LAST_VALUE(price) as session_close
FROM market_ticks
GROUP BY symbol, SESSION(ts, INTERVAL '10' SECOND);
