"""Keycloak representation schemas: which JSON properties each one accepts.

Keycloak deserialises request bodies with Jackson and FAIL_ON_UNKNOWN_PROPERTIES, so
an unknown property is a 400 whose ``error`` is Jackson's "Unrecognized field" text
(KcUnrecognizedPropertyExceptionHandler). The property lists below are those of
``org.keycloak.representations.idm.*`` in Keycloak 26.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import KeycloakHTTPError

_PACKAGE = "org.keycloak.representations.idm"

_WEBAUTHN = [
    "RpEntityName",
    "SignatureAlgorithms",
    "RpId",
    "AttestationConveyancePreference",
    "AuthenticatorAttachment",
    "RequireResidentKey",
    "UserVerificationRequirement",
    "CreateTimeout",
    "AvoidSameAuthenticatorRegister",
    "AcceptableAaguids",
    "ExtraOrigins",
]

REALM_FIELDS = frozenset(
    """
    id realm displayName displayNameHtml notBefore defaultSignatureAlgorithm
    revokeRefreshToken refreshTokenMaxReuse accessTokenLifespan
    accessTokenLifespanForImplicitFlow ssoSessionIdleTimeout ssoSessionMaxLifespan
    ssoSessionIdleTimeoutRememberMe ssoSessionMaxLifespanRememberMe
    offlineSessionIdleTimeout offlineSessionMaxLifespanEnabled offlineSessionMaxLifespan
    clientSessionIdleTimeout clientSessionMaxLifespan clientOfflineSessionIdleTimeout
    clientOfflineSessionMaxLifespan accessCodeLifespan accessCodeLifespanUserAction
    accessCodeLifespanLogin actionTokenGeneratedByAdminLifespan
    actionTokenGeneratedByUserLifespan oauth2DeviceCodeLifespan
    oauth2DevicePollingInterval enabled sslRequired passwordCredentialGrantAllowed
    registrationAllowed registrationEmailAsUsername rememberMe verifyEmail
    loginWithEmailAllowed duplicateEmailsAllowed resetPasswordAllowed
    editUsernameAllowed userCacheEnabled realmCacheEnabled bruteForceProtected
    permanentLockout maxTemporaryLockouts bruteForceStrategy maxFailureWaitSeconds
    minimumQuickLoginWaitSeconds waitIncrementSeconds quickLoginCheckMilliSeconds
    maxDeltaTimeSeconds failureFactor privateKey publicKey certificate codeSecret
    roles groups defaultRoles defaultRole adminPermissionsClient defaultGroups
    requiredCredentials passwordPolicy otpPolicyType otpPolicyAlgorithm
    otpPolicyInitialCounter otpPolicyDigits otpPolicyLookAheadWindow otpPolicyPeriod
    otpPolicyCodeReusable otpSupportedApplications localizationTexts clientProfiles
    clientPolicies users federatedUsers scopeMappings clientScopeMappings clients
    clientScopes defaultDefaultClientScopes defaultOptionalClientScopes
    browserSecurityHeaders smtpServer userFederationProviders userFederationMappers
    loginTheme accountTheme adminTheme emailTheme eventsEnabled eventsExpiration
    eventsListeners enabledEventTypes adminEventsEnabled adminEventsDetailsEnabled
    identityProviders identityProviderMappers protocolMappers components
    internationalizationEnabled supportedLocales defaultLocale authenticationFlows
    authenticatorConfig requiredActions browserFlow registrationFlow directGrantFlow
    resetCredentialsFlow clientAuthenticationFlow dockerAuthenticationFlow
    firstBrokerLoginFlow attributes keycloakVersion userManagedAccessAllowed
    organizationsEnabled organizations verifiableCredentialsEnabled
    adminPermissionsEnabled social updateProfileOnInitialSocialLogin socialProviders
    applicationScopeMappings applications oauthClients clientTemplates
    oAuth2DeviceCodeLifespan oAuth2DevicePollingInterval
    """.split()
    + [f"webAuthnPolicy{name}" for name in _WEBAUTHN]
    + [f"webAuthnPolicyPasswordless{name}" for name in _WEBAUTHN]
)

CLIENT_FIELDS = frozenset(
    """
    id clientId name description type rootUrl adminUrl baseUrl surrogateAuthRequired
    enabled alwaysDisplayInConsole clientAuthenticatorType secret
    registrationAccessToken defaultRoles redirectUris webOrigins notBefore bearerOnly
    consentRequired standardFlowEnabled implicitFlowEnabled directAccessGrantsEnabled
    serviceAccountsEnabled oauth2DeviceAuthorizationGrantEnabled
    authorizationServicesEnabled directGrantsOnly publicClient frontchannelLogout
    protocol attributes authenticationFlowBindingOverrides fullScopeAllowed
    nodeReRegistrationTimeout registeredNodes protocolMappers clientTemplate
    useTemplateConfig useTemplateScope useTemplateMappers defaultClientScopes
    optionalClientScopes authorizationSettings access origin
    """.split()
)

USER_FIELDS = frozenset(
    """
    id origin createdTimestamp username enabled totp emailVerified firstName lastName
    email federationLink serviceAccountClientId attributes credentials
    disableableCredentialTypes requiredActions federatedIdentities realmRoles
    clientRoles clientConsents notBefore applicationRoles socialLinks groups access
    self userProfileMetadata
    """.split()
)

ROLE_FIELDS = frozenset(
    """
    id name description scopeParamRequired composite composites clientRole containerId
    attributes
    """.split()
)

PROTOCOL_MAPPER_FIELDS = frozenset("id name protocol protocolMapper consentRequired consentText config".split())

CREDENTIAL_FIELDS = frozenset(
    """
    id type userLabel createdDate secretData credentialData priority value temporary
    device hashedSaltedValue salt hashIterations counter algorithm digits period config
    federationLink
    """.split()
)

CLIENT_SCOPE_FIELDS = frozenset("id name description protocol attributes protocolMappers".split())

GROUP_FIELDS = frozenset(
    """
    id name description path parentId subGroupCount subGroups attributes realmRoles
    clientRoles access
    """.split()
)

PARTIAL_IMPORT_FIELDS = frozenset(
    "ifResourceExists policy id realm users clients groups identityProviders roles".split()
)

USER_PROFILE_FIELDS = frozenset("attributes groups unmanagedAttributePolicy".split())

_CLASS_NAMES = {
    REALM_FIELDS: "RealmRepresentation",
    CLIENT_FIELDS: "ClientRepresentation",
    USER_FIELDS: "UserRepresentation",
    ROLE_FIELDS: "RoleRepresentation",
    PROTOCOL_MAPPER_FIELDS: "ProtocolMapperRepresentation",
    CREDENTIAL_FIELDS: "CredentialRepresentation",
    GROUP_FIELDS: "GroupRepresentation",
    CLIENT_SCOPE_FIELDS: "ClientScopeRepresentation",
    PARTIAL_IMPORT_FIELDS: "PartialImportRepresentation",
    USER_PROFILE_FIELDS: "userprofile.config.UPConfig",
}


def parse_json(raw: bytes) -> Any:
    """Parse a request body; malformed JSON is Keycloak's 400 ``invalid_request``."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise KeycloakHTTPError(
            400, {"error": "invalid_request", "error_description": "Cannot parse the JSON"}
        ) from None


def unrecognized_field(name: str, fields: frozenset[str]) -> KeycloakHTTPError:
    """Jackson's UnrecognizedPropertyException message, as Keycloak returns it."""
    cls = f"{_PACKAGE}.{_CLASS_NAMES[fields]}"
    return KeycloakHTTPError(
        400,
        {
            "error": f'Unrecognized field "{name}" (class {cls}), not marked as ignorable '
            f"({len(fields)} known properties)"
        },
    )


def check_object(payload: Any, fields: frozenset[str]) -> dict[str, Any]:
    """Validate that ``payload`` is an object using only ``fields``; return it."""
    if not isinstance(payload, dict):
        raise KeycloakHTTPError(400, {"error": "unknown_error", "error_description": "Cannot parse the JSON"})
    for name in payload:
        if name not in fields:
            raise unrecognized_field(name, fields)
    return payload


def check_list(payload: Any, fields: frozenset[str]) -> list[dict[str, Any]]:
    """Validate a JSON array of representations."""
    if not isinstance(payload, list):
        raise KeycloakHTTPError(400, {"error": "unknown_error", "error_description": "Cannot parse the JSON"})
    return [check_object(item, fields) for item in payload]
