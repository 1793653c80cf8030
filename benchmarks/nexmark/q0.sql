-- Nexmark q0, pass-through: every bid as it is (the cost of reading,
-- decoding and writing alone).
CREATE TABLE bid (
  auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
  channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-bid', 'format' = 'json', 'key' = 'auction');

CREATE STREAM q0 AS
SELECT auction, bidder, price, date_time, extra FROM bid;
