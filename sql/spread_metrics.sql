CREATE STREAM spread_metrics AS
SELECT symbol,
       AVG(ask - bid) as avg_spread,
       MIN(ask - bid) as min_spread,
       MAX(ask - bid) as max_spread,
       STDDEV(ask - bid) as stddev_spread,
       -- Spread as percentage of mid price
       AVG((ask - bid) / ((ask + bid) / 2) * 100) as avg_spread_pct
FROM market_ticks
WHERE ask > bid  -- filter invalid spreads
GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);
