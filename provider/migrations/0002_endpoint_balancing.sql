-- Inference endpoints: sticky sessions (an appproxy extension of Backend.AI's endpoint).
ALTER TABLE endpoints ADD COLUMN sticky BIGINT NOT NULL DEFAULT 0;
