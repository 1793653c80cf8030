CREATE STREAM volume_pressure AS
SELECT symbol,
       SUM(CASE WHEN side = 'buy' THEN volume ELSE 0 END) as buy_volume,
       SUM(CASE WHEN side = 'sell' THEN volume ELSE 0 END) as sell_volume,
       SUM(CASE WHEN side = 'buy' THEN 1 ELSE 0 END) as buy_count,
       SUM(CASE WHEN side = 'sell' THEN 1 ELSE 0 END) as sell_count,
       -- Volume imbalance ratio: positive = buy pressure
       (SUM(CASE WHEN side = 'buy' THEN volume ELSE 0 END) -
        SUM(CASE WHEN side = 'sell' THEN volume ELSE 0 END)) /
       NULLIF(SUM(volume), 0) as imbalance_ratio
FROM market_ticks
GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);
