-- The API-key tables of the local NDIF stack (start.sh loads this once, into a fresh cluster).
--
-- The smallest schema that ndif 0.1.2's key check accepts: the query `_KEY_QUERY` in
-- ndif/services/api/auth.py joins keys -> users (email) and keys ->
-- key_user_tag_assignments -> user_tags (name), filtered on keys.key_id (a UUID).
-- NDIF's own init.sql (docker/postgres/init.sql in the NDIF sources) has more tables and
-- columns (profiles, models, audit logs, verification status); the key check reads none of
-- them. As in production, the API connects as a read-only role, `ndifapi`.
CREATE TABLE users (
    user_id UUID PRIMARY KEY,
    email TEXT UNIQUE NOT NULL
);
CREATE TABLE user_tags (
    user_tag_id UUID PRIMARY KEY,
    name TEXT UNIQUE NOT NULL
);
CREATE TABLE keys (
    key_id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (user_id) ON DELETE CASCADE
);
CREATE TABLE key_user_tag_assignments (
    key_id UUID NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    user_tag_id UUID NOT NULL REFERENCES user_tags (user_tag_id),
    PRIMARY KEY (key_id, user_tag_id)
);
CREATE ROLE ndifapi LOGIN;
GRANT USAGE ON SCHEMA public TO ndifapi;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO ndifapi;
