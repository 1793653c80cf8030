-- Nexmark q5, hot items: the auctions with the most bids in each 10-second
-- window sliding every 2 seconds.
--
-- Adapted: Flink's formulation joins the counts with their maximum per
-- window; a window top-N (RANK = 1 keeps the ties) computes the same rows.
CREATE TABLE bid (
  auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
  channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-bid', 'format' = 'json', 'key' = 'auction');

CREATE STREAM q5 AS
WITH counts AS (
  SELECT auction, window_start, window_end, COUNT(*) AS num
  FROM bid GROUP BY auction, HOP(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
)
SELECT auction, num, window_start, window_end FROM (
  SELECT auction, num, window_start, window_end,
         RANK() OVER (PARTITION BY window_start, window_end ORDER BY num DESC) AS rk
  FROM counts
) WHERE rk = 1;
