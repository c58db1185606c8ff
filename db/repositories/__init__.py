from db.repositories.calculation import CalculationPage, CalculationRepository
from db.repositories.refresh_token import RefreshTokenRepository
from db.repositories.user import UserRepository
from db.repositories.worker import WorkerRepository

__all__ = [
    "CalculationPage",
    "CalculationRepository",
    "RefreshTokenRepository",
    "UserRepository",
    "WorkerRepository",
]
