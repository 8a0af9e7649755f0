-- Least privilege for the validator (docs/security.md): read revocations, write the
-- usage counters of tokens, nothing else. Run as the owner of the `mltokens` schema
-- after `mltokens db upgrade`; running it again changes nothing.
-- tests/deploy/test_validator_grants.py checks these grants on a real database.
GRANT USAGE ON SCHEMA mltokens TO mltokens_validator;
GRANT SELECT (jti, token_id, effective_at, expires_at) ON mltokens.revocation TO mltokens_validator;
GRANT SELECT (id, last_used_at, use_count), UPDATE (last_used_at, use_count)
    ON mltokens.token TO mltokens_validator;
-- Usage batches are applied once (validator/usage.py): the batch id is inserted with the counters.
GRANT INSERT ON mltokens.usage_batch TO mltokens_validator;
-- Daily counts (token page, mltoken_usage) are added in the same statement.
GRANT SELECT (token_id, day, count), INSERT, UPDATE (count) ON mltokens.usage_daily TO mltokens_validator;
