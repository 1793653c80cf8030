-- q8 in batch: people who opened an auction in the 10-second window in
-- which they registered.
SELECT p.id, p.name, p.window_start
FROM (SELECT DISTINCT id, name, date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01 00:00:00') AS window_start
      FROM person) p
JOIN (SELECT DISTINCT seller, date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01 00:00:00') AS window_start
      FROM auction) a
  ON p.id = a.seller AND p.window_start = a.window_start
