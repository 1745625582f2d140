"""The async twins: AsyncDbService and its domains, running the sync implementation."""
