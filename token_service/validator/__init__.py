"""The gateway-facing validator: `mltokens serve`.

A request flows authenticate (bearer → signature → claims → revocation) → authorize
(route policy) → answer (identity headers or a refusal). Nothing here imports CKAN.
"""
