CREATE STREAM large_trades AS
SELECT symbol, price, volume, side, ts
FROM market_ticks
WHERE volume > 500;
