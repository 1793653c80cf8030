-- q0 in batch (DataFusion, DuckDB): every bid.
SELECT auction, bidder, price, date_time, extra FROM bid
