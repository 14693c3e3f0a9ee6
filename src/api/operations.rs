//! Every operation's problems: the statuses besides 500 and 503 its refusals can have, declared
//! in the spec for that operation alone (see [`Problems`](super::error::Problems)). Reasons
//! common to many: 400 (a malformed id, parameter or body), 401 (no valid token), 403 (the
//! token's scope), 413 (a body over its limit: any request but a GET or HEAD may send one),
//! 415 (a body of another media type).

use super::error::problems;

problems! {
    /// `POST /blobs/missing`.
    MissingBlobs = [400, 401, 403, 413, 415, 422];
    /// `GET /events`: its 429 is declared with its page.
    ListEvents = [400, 401, 422];
    /// `GET /packages/{id}/attestation`.
    GetAttestation = [400, 401, 404, 410];
    /// `GET /log/checkpoint`.
    GetLatestCheckpoint = [401, 404];
    /// `GET /log/checkpoints`.
    ListCheckpoints = [400, 401];
    /// `GET /log/links`.
    ListChainLinks = [400, 401];
    /// `POST /log/checkpoints`.
    MakeCheckpoint = [401, 403, 404, 413];
    /// `GET /keys`.
    ListKeys = [];
    /// `GET /files/{id}`.
    GetFile = [400, 401, 404];
    /// `GET /files/{id}/download`: its 416 is declared with its bytes.
    DownloadFile = [400, 401, 404, 429];
    /// `GET` and `HEAD /packages/{id}/files/{path}`: their 416 is declared with the bytes.
    DownloadFileByPath = [400, 401, 404, 410, 422, 429];
    /// `DELETE /packages/{id}`.
    DeletePackage = [400, 401, 403, 404, 409, 410, 413, 415, 422];
    /// `DELETE /packages/{id}/files/{path}`.
    DeleteFile = [400, 401, 403, 404, 409, 410, 412, 413, 422];
    /// `GET /audit/retrievals`.
    ListRetrievals = [400, 401, 403, 422];
    /// `POST /packages`.
    CreatePackage = [400, 401, 403, 413, 415, 422, 507];
    /// `GET /packages`.
    ListPackages = [400, 401, 422];
    /// `GET /packages/{id}`.
    GetPackage = [400, 401, 404, 410, 429];
    /// `POST /packages/{id}/files` (multipart).
    UploadFile = [400, 401, 403, 404, 409, 410, 412, 413, 415, 422, 507];
    /// `PUT /packages/{id}/files/{path}`.
    PutFile = [400, 401, 403, 404, 409, 410, 412, 413, 422, 507];
    /// `POST /packages/{id}/links`.
    LinkFile = [400, 401, 403, 404, 409, 410, 413, 415, 422, 507];
    /// `POST /packages/{id}/links/batch`.
    LinkFiles = [400, 401, 403, 404, 409, 410, 413, 415, 422, 507];
    /// `POST /packages/{id}/finalize`.
    FinalizePackage = [400, 401, 403, 404, 409, 410, 413, 415, 422];
    /// `GET /packages/{id}/manifest`.
    GetManifest = [400, 401, 404, 406, 410, 429];
    /// `GET /packages/{id}/manifest.json`.
    GetManifestJson = [400, 401, 404, 410, 429];
    /// `GET /retention-classes`.
    ListRetentionClasses = [401];
    /// `PUT /retention-classes/{name}`.
    DefineRetentionClass = [400, 401, 403, 413, 415, 422];
    /// `PUT /packages/{id}/legal-hold`.
    SetLegalHold = [400, 401, 403, 404, 409, 410, 413, 415, 422];
    /// `DELETE /packages/{id}/legal-hold`.
    ReleaseLegalHold = [400, 401, 403, 404, 409, 410, 413];
    /// `PATCH /packages/{id}/retention`.
    ChangeRetention = [400, 401, 403, 404, 409, 410, 413, 415, 422];
    /// `GET /usage`.
    GetUsage = [401];
    /// `GET /storage/locations`.
    ListStorageLocations = [400, 401, 403, 422];
    /// `PUT /tenants/{tenant}/quota`.
    SetQuota = [400, 401, 403, 413, 415, 422];
    /// `GET /tenants/{tenant}/quota`.
    GetQuota = [400, 401, 403, 404, 422];
    /// `POST /uploads`.
    CreateUpload = [400, 401, 403, 404, 409, 410, 413, 415, 422, 507];
    /// `GET /uploads/{id}`.
    GetUpload = [400, 401, 403, 404];
    /// `PATCH /uploads/{id}`.
    AppendUpload = [400, 401, 403, 404, 409, 410, 413, 415, 416, 422, 429, 507];
    /// `POST /uploads/{id}/complete`.
    CompleteUpload = [400, 401, 403, 404, 409, 410, 413, 422, 429, 507];
    /// `DELETE /uploads/{id}`.
    CancelUpload = [400, 401, 403, 404, 409, 413, 429];
}
