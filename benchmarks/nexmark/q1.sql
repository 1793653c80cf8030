-- Nexmark q1, currency conversion: bid prices from dollars to euros.
CREATE TABLE bid (
  auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
  channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-bid', 'format' = 'json', 'key' = 'auction');

CREATE STREAM q1 AS
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid;
