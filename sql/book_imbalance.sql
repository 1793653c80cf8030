CREATE STREAM book_imbalance AS
SELECT symbol,
       SUM(CASE WHEN side = 'bid' THEN quantity ELSE 0 END) as bid_depth,
       SUM(CASE WHEN side = 'ask' THEN quantity ELSE 0 END) as ask_depth,
       -- Imbalance: 0.5 = balanced, >0.5 = bid heavy, <0.5 = ask heavy
       CAST(SUM(CASE WHEN side = 'bid' THEN quantity ELSE 0 END) AS DOUBLE) /
       NULLIF(CAST(SUM(quantity) AS DOUBLE), 0) as imbalance,
       COUNT(*) as update_count
FROM book_updates
WHERE action != 'delete'
GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);
