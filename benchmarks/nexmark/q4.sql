-- Nexmark q4, average price per category: the winning bid of each auction
-- (the highest bid while it was open), averaged per category.
--
-- Adapted: the join of bids with their auction is an interval join, so it
-- needs a constant bound on how long after its start a bid can come; the
-- auction's own end (`expires`) is checked per pair. The bound must cover
-- the longest auction: at the generator's default 10 000 events/s auctions
-- last at most 334 ms, at 1 000 events/s 3.4 s.
CREATE TABLE auction (
  id BIGINT NOT NULL, item_name VARCHAR NOT NULL, description VARCHAR NOT NULL,
  initial_bid BIGINT NOT NULL, reserve BIGINT NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  expires TIMESTAMP(3) NOT NULL, seller BIGINT NOT NULL, category BIGINT NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-auction', 'format' = 'json', 'key' = 'id');

CREATE TABLE bid (
  auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
  channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-bid', 'format' = 'json', 'key' = 'auction');

CREATE STREAM q4_bids AS
SELECT a.id, a.category, a.date_time, b.price
FROM auction a JOIN bid b
  ON a.id = b.auction
 AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND
 AND b.date_time <= a.expires;

CREATE STREAM q4_winning AS
SELECT id, category, MAX(price) AS final FROM q4_bids GROUP BY id, category;

CREATE STREAM q4 AS
SELECT category, AVG(final) AS avg_final FROM q4_winning GROUP BY category;
