from crunchql.db.repositories.calculation import CalculationPage, CalculationRepository
from crunchql.db.repositories.refresh_token import RefreshTokenRepository
from crunchql.db.repositories.shard import ShardFinish, ShardProgress, ShardRepository
from crunchql.db.repositories.user import UserRepository
from crunchql.db.repositories.worker import WorkerRepository

__all__ = [
    "CalculationPage",
    "CalculationRepository",
    "RefreshTokenRepository",
    "ShardFinish",
    "ShardProgress",
    "ShardRepository",
    "UserRepository",
    "WorkerRepository",
]
