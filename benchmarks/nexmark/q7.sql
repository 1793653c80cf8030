-- Nexmark q7, highest bid: the bids with the highest price of each
-- 10-second window.
--
-- As Flink's formulation: the maximum per window, joined back with the
-- bids of that window (an interval join on the price).
CREATE TABLE bid (
  auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
  channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-bid', 'format' = 'json', 'key' = 'auction');

CREATE STREAM q7_max AS
SELECT MAX(price) AS maxprice FROM bid GROUP BY TUMBLE(date_time, INTERVAL '10' SECOND);

CREATE STREAM q7 AS
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra, m.window_end
FROM q7_max m JOIN bid b
  ON b.price = m.maxprice
 AND b.date_time >= m.window_end - INTERVAL '10' SECOND
 AND b.date_time < m.window_end;
