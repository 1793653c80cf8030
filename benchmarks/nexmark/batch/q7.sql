-- q7 in batch: the highest price of each 10-second window, joined back
-- with the bids of that window.
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra, m.window_end
FROM (
  SELECT MAX(price) AS maxprice, window_start + INTERVAL '10 seconds' AS window_end
  FROM (SELECT price, date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01 00:00:00') AS window_start FROM bid) w
  GROUP BY window_start
) m
JOIN bid b ON b.price = m.maxprice
 AND b.date_time >= m.window_end - INTERVAL '10 seconds'
 AND b.date_time < m.window_end
