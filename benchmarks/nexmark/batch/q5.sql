-- q5 in batch: bids counted per auction in 10-second windows sliding every
-- 2 seconds (each bid is in the five windows starting at its 2-second slot
-- and the four before), the auctions with the most bids per window.
WITH slots AS (
  SELECT auction, date_bin(INTERVAL '2 seconds', date_time, TIMESTAMP '1970-01-01 00:00:00') AS slot FROM bid
), windows AS (
  SELECT auction, slot AS window_start FROM slots
  UNION ALL SELECT auction, slot - INTERVAL '2 seconds' FROM slots
  UNION ALL SELECT auction, slot - INTERVAL '4 seconds' FROM slots
  UNION ALL SELECT auction, slot - INTERVAL '6 seconds' FROM slots
  UNION ALL SELECT auction, slot - INTERVAL '8 seconds' FROM slots
), counts AS (
  SELECT auction, window_start, COUNT(*) AS num FROM windows GROUP BY auction, window_start
)
SELECT auction, num, window_start, window_start + INTERVAL '10 seconds' AS window_end FROM (
  SELECT auction, num, window_start,
         RANK() OVER (PARTITION BY window_start ORDER BY num DESC) AS rk
  FROM counts
) ranked WHERE rk = 1
