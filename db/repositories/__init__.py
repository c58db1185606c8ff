from crunchql.db.repositories.audit import AuditPage, AuditRepository
from crunchql.db.repositories.auth_session import AuthSessionRepository
from crunchql.db.repositories.calculation import CalculationPage, CalculationRepository
from crunchql.db.repositories.refresh_token import RefreshTokenRepository
from crunchql.db.repositories.user import UserPage, UserRepository
from crunchql.db.repositories.worker import WorkerRepository

__all__ = [
    "AuditPage",
    "AuditRepository",
    "AuthSessionRepository",
    "CalculationPage",
    "CalculationRepository",
    "RefreshTokenRepository",
    "UserPage",
    "UserRepository",
    "WorkerRepository",
]
