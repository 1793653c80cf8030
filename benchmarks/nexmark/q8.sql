-- Nexmark q8, monitor new users: the people who opened an auction in the
-- same 10-second window in which they registered (a window join).
CREATE TABLE person (
  id BIGINT NOT NULL, name VARCHAR NOT NULL, email_address VARCHAR NOT NULL,
  credit_card VARCHAR NOT NULL, city VARCHAR NOT NULL, state VARCHAR NOT NULL,
  date_time TIMESTAMP(3) NOT NULL, extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-person', 'format' = 'json', 'key' = 'id');

CREATE TABLE auction (
  id BIGINT NOT NULL, item_name VARCHAR NOT NULL, description VARCHAR NOT NULL,
  initial_bid BIGINT NOT NULL, reserve BIGINT NOT NULL, date_time TIMESTAMP(3) NOT NULL,
  expires TIMESTAMP(3) NOT NULL, seller BIGINT NOT NULL, category BIGINT NOT NULL,
  extra VARCHAR NOT NULL,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('topic' = 'nexmark-auction', 'format' = 'json', 'key' = 'id');

CREATE STREAM q8_people AS
SELECT id, name
FROM person GROUP BY id, name, TUMBLE(date_time, INTERVAL '10' SECOND);

CREATE STREAM q8_sellers AS
SELECT seller
FROM auction GROUP BY seller, TUMBLE(date_time, INTERVAL '10' SECOND);

CREATE STREAM q8 AS
SELECT p.id, p.name, p.window_start
FROM q8_people p JOIN q8_sellers a
  ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end;
