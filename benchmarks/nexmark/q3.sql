-- Nexmark q3, local item suggestion: auctions in category 10 by sellers in
-- Oregon, Idaho or California.
--
-- A regular join (no time bound): each table is read by its key (`id`), and
-- a seller's auctions come out whichever of the two arrives first. The
-- result is an updating stream keyed by the auction's id.
CREATE TABLE auction (
  id BIGINT NOT NULL, item_name VARCHAR NOT NULL, description VARCHAR NOT NULL,
  initial_bid BIGINT NOT NULL, reserve BIGINT NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  expires TIMESTAMP(3) NOT NULL, seller BIGINT NOT NULL, category BIGINT NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-auction', 'format' = 'json', 'key' = 'id');

CREATE TABLE person (
  id BIGINT NOT NULL, name VARCHAR NOT NULL, email_address VARCHAR NOT NULL,
  credit_card VARCHAR NOT NULL, city VARCHAR NOT NULL, state VARCHAR NOT NULL,
  date_time TIMESTAMP(3) NOT NULL, extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-person', 'format' = 'json', 'key' = 'id');

CREATE STREAM q3 AS
SELECT p.name, p.city, p.state, a.id
FROM auction a JOIN person p ON a.seller = p.id
WHERE a.category = 10 AND (p.state = 'OR' OR p.state = 'ID' OR p.state = 'CA');
